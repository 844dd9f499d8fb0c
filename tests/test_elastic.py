"""Elastic and multi-machine training on 127.0.0.1: a worker killed mid-epoch costs one
checkpoint, two agents as two machines train as one, and failures say what happened. Every
process is bounded in time and ended by the test."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_error
from safetensors.torch import load_file

HOOK = Path(__file__).parent / "hooks"
RUN = ["--recipe", "fast", "--hard", "0.4", "--lr", "0.02", "--subset", "1536", "--bs", "64",
       "--epochs", "3", "--checkpoint-every", "4"]


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HOOK), **extra}


def train(*args, timeout=300, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convscope", "train", *args], env=env(**extra),
                          capture_output=True, text=True, timeout=timeout)


def start(*args, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "convscope", "train", *args],
                            env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(procs: list[subprocess.Popen], timeout=300) -> list[tuple[int, str, str]]:
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=timeout)
            out.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted two-process run."""
    ref = tmp_path_factory.mktemp("elastic") / "ref"
    proc = train("--nproc", "2", *RUN, "--out", str(ref))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ref


def test_a_killed_worker_costs_one_checkpoint(reference, tmp_path):
    run = tmp_path / "run"
    # epoch 0: 24 batches, 12 per process; epochs 1 and 2 draw the hardest 40% (615 images: 10
    # batches, the last of 39 images, 5 per process); checkpoints after batch 3 of each epoch
    # (and 7, 11 of the first): rank 1 dies after batch 4 of epoch 1, so batch 4 is trained
    # again, from the losses and the choice of images rank 0's checkpoint holds
    proc = train("--nproc", "2", "--max-restarts", "1", *RUN, "--out", str(run),
                 CONVSCOPE_TEST_DIE_AT="1 1 4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "restart 1 of 1: resumed from epoch 1, batch 4" in proc.stdout
    same_weights(reference, run)
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["0", "1", "2"]  # each epoch once
    ref_stats, stats = (load_file(d / "activation_stats.safetensors") for d in (reference, run))
    # the recipe records one batch in 8 at bs 64 (one per 512 images): 16 is in both lives
    assert stats["batches"].tolist() == ref_stats["batches"].tolist() == list(range(0, 22, 8))
    for k in ref_stats:
        assert torch.equal(ref_stats[k], stats[k]), k
    # the restarted run's history is the uninterrupted one's: no batch's loss twice
    ref_h, h = (json.loads((d / "history.json").read_text()) for d in (reference, run))
    for key in ("losses", "epoch_ends", "marks"):
        assert h[key] == ref_h[key], key


def test_the_failure_named_is_the_root_cause(tmp_path):
    """Not a process that lost its peer (exit 4) or that the launcher stopped with SIGTERM,
    although torch's timestamps (one-second resolution) may put those first."""
    from types import SimpleNamespace as Obj

    from convscope.errors import PeerLost
    from convscope.run.launch import Launch, failed_message

    def named(**codes):
        failures = {int(r[1:]): Obj(exitcode=c, timestamp=100) for r, c in codes.items()}
        return failed_message(Obj(failures=failures), Launch(nproc=3), tmp_path)

    assert "process 1 stopped (killed by signal 9)" in named(
        r0=-signal.SIGTERM, r1=-signal.SIGKILL, r2=PeerLost.exit_code)
    assert "process 2 stopped (exit code 1)" in named(r0=PeerLost.exit_code, r1=-15, r2=1)
    assert "process 0 stopped (killed by signal 15)" in named(r0=-15, r1=PeerLost.exit_code)


def test_restarts_used_up_keep_the_checkpoint_and_say_how_to_continue(tmp_path):
    run = tmp_path / "run"
    proc = train("--nproc", "2", "--max-restarts", "1", *RUN, "--out", str(run),
                 CONVSCOPE_TEST_DIE_AT="1 1 4 always")
    assert proc.returncode == 1
    line = cli_error(proc.stderr)
    assert "training failed: process 1 stopped (killed by signal 9) and its 1 restart are " \
           "used up" in line
    assert f"{run / 'checkpoint.safetensors'} holds epoch 1, batch 4" in line
    assert f"Continue with `convscope train --resume {run}`" in line
    resumed = train("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "distributed: 2 processes" in resumed.stdout


def test_two_machines_on_localhost_train_as_one(reference, tmp_path):
    run, port = tmp_path / "two", free_port()
    machine = ["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-timeout", "120", *RUN, "--out", str(run)]
    results = finish([start(*machine, "--node-rank", "0"), start(*machine, "--node-rank", "1")])
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert sum(out.count("test accuracy ") for _, out, _ in results) == 1  # global rank 0
    same_weights(reference, run)
    # the same world size on one machine resumes it; another is refused, saying how
    (run / "report.html").unlink()
    refused = train("--resume", str(run))
    assert refused.returncode == 2
    assert "Resume it in 2: `convscope train --resume RUN_DIR --nproc 2`" in cli_error(
        refused.stderr)
    resumed = train("--resume", str(run), "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run / "report.html").is_file()


def test_machines_with_different_settings_are_refused(tmp_path):
    port = free_port()
    machine = ["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-timeout", "120", *RUN, "--out", str(tmp_path / "run")]
    results = finish([start(*machine, "--node-rank", "0", "--lr", "0.03"),
                      start(*machine, "--node-rank", "1", "--lr", "0.1")])
    assert [code for code, _, _ in results] == [2, 2]
    err = "".join(e for _, _, e in results)
    assert "the processes were started with different settings (lr: rank 0 " in err


def test_a_machine_that_never_joins(tmp_path):
    proc = train("--nproc", "1", "--nnodes", "2", "--rdzv-endpoint",
                 f"127.0.0.1:{free_port()}", "--rdzv-timeout", "5", *RUN, "--out",
                 str(tmp_path / "run"), timeout=120)
    assert proc.returncode == 1
    assert "the 2 machines did not all join the rendezvous" in cli_error(proc.stderr)
    assert not (tmp_path / "run").exists()  # the failed start left no empty run folder


def test_a_machine_whose_host_never_comes_stops_within_its_timeout(tmp_path):
    """Node rank 1 of 2 with no node rank 0 anywhere: it gives up after --rdzv-timeout (3 s
    here), not after torch's own minutes of retrying (149 s were seen with a timeout of 5)."""
    proc = train("--nproc", "1", "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint",
                 f"127.0.0.1:{free_port()}", "--rdzv-timeout", "3", *RUN, "--out",
                 str(tmp_path / "run"), timeout=90)
    assert proc.returncode == 1
    assert "the machine of node rank 0 did not serve the rendezvous at 127.0.0.1:" in \
        cli_error(proc.stderr)


def test_a_rendezvous_port_in_use_is_refused(tmp_path):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = train("--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}",
                     *RUN, "--out", str(tmp_path / "run"), timeout=120)
    assert proc.returncode == 2
    assert f"port {port} cannot be served here" in cli_error(proc.stderr)
