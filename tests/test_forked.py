"""forked_map: jobs spread over forked copies, and the parent as the fallback for anything a
copy does not deliver."""

import os
import signal
import sys

import pytest

from convscope import forked
from convscope.forked import forked_map

PARENT = os.getpid()
parallel = pytest.mark.skipif(forked.cores() < 2 or not sys.platform.startswith("linux"),
                              reason="forked_map runs serially with one core or off Linux")


def square_and_pid(x):
    return x * x, os.getpid()


def no_children_left():
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_results_come_back_in_order():
    assert [r for r, _ in forked_map(square_and_pid, range(7))] == [x * x for x in range(7)]
    assert forked_map(square_and_pid, []) == []
    assert no_children_left()


@parallel
def test_jobs_run_in_several_processes():
    pids = {pid for _, pid in forked_map(square_and_pid, range(8))}
    assert PARENT in pids and len(pids) >= 2


@parallel
def test_a_job_that_fails_in_a_copy_is_run_again_in_the_parent():
    def only_here(x):
        if os.getpid() != PARENT:
            raise RuntimeError("a copy's failure")
        return x + 1

    assert forked_map(only_here, range(6)) == [1, 2, 3, 4, 5, 6]
    assert no_children_left()


@parallel
def test_a_copy_that_never_answers_is_stopped_and_its_jobs_done_here():
    def hang_in_copy(x):
        if os.getpid() != PARENT:
            signal.pause()  # forever: only the timeout ends it
        return -x

    assert forked_map(hang_in_copy, range(4), timeout=0.5) == [0, -1, -2, -3]
    assert no_children_left()


def test_an_error_in_the_parent_propagates_and_leaves_no_process_behind():
    def fail_here(x):
        if os.getpid() == PARENT and x == 0:
            raise ValueError("bad job")
        return x

    with pytest.raises(ValueError, match="bad job"):
        forked_map(fail_here, range(4))
    assert no_children_left()
