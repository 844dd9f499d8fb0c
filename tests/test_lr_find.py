import copy
import math
import os
import random
import re

import numpy as np
import pytest
import torch
from conftest import stripes
from eye import check_drawn_figures

from convscope.callbacks.lr_find import suggest_lrs
from convscope.cli import main
from convscope.data import DataLoaders
from convscope.learner import Learner
from convscope.models import simple_cnn
from convscope.optimizers import sgd


def learner(bn=True, **kw) -> Learner:
    torch.manual_seed(0)
    dls = DataLoaders.from_data(stripes(512, 64), bs=32, seed=0)
    return Learner(dls, simple_cnn(n_classes=4, bn=bn), progress=False, **kw)


def test_lr_find_has_no_side_effects(tmp_path, monkeypatch):
    learn = learner()
    learn.fit(1, lr=1e-3)  # so there is optimizer state and a recorder history
    model = copy.deepcopy(learn.model.state_dict())
    opt = copy.deepcopy(learn.opt.state_dict())
    history = learn.recorder.history()
    rng, loader = torch.get_rng_state(), learn.dls.train.generator.get_state()
    py_state, np_state = random.getstate(), np.random.get_state()
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))

    learn.lr_find(num_it=30)

    assert set(os.listdir(tmp_path)) == before  # no files, so nothing to collide with
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, model[k]), k  # weights and batchnorm running statistics
    after = learn.opt.state_dict()
    for pid, state in opt["state"].items():
        for k, v in state.items():
            assert torch.equal(v, after["state"][pid][k])
    assert after["param_groups"] == opt["param_groups"]
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(learn.dls.train.generator.get_state(), loader)
    assert random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert learn.recorder.history() == history
    assert [c.name for c in learn.cbs] == ["recorder", "divergence_guard"]


def test_lr_find_sweeps_exponentially_and_stops_on_divergence():
    learn = learner(bn=False, opt_func=sgd)
    found = learn.lr_find(start_lr=1e-5, end_lr=1e3, num_it=100)
    lrs, losses = found.lrs, found.losses
    ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert all(r == pytest.approx(ratios[0]) for r in ratios)
    assert ratios[0] == pytest.approx((1e3 / 1e-5) ** (1 / 99))
    assert len(lrs) < 100  # stopped early: the loss blew up
    last = losses[-1]
    assert not math.isfinite(last) or last > 4 * min(losses)


def test_lr_find_without_a_prior_fit_leaves_no_optimizer():
    learn = learner()
    learn.lr_find(num_it=20)
    assert learn.opt is None


def test_suggestions_on_a_known_curve():
    lrs = [10 ** (-7 + 8 * i / 99) for i in range(100)]
    # flat, then falling from lr 1e-4 to 1e-1, then rising
    losses = [2.0 if lr < 1e-4 else 2.0 - math.log10(lr / 1e-4) / 2 if lr < 1e-1
              else 0.5 + (math.log10(lr) + 1) for lr in lrs]
    s = suggest_lrs(lrs, losses)
    assert 1e-3 < s.valley < 1e-1
    assert 1e-4 <= s.steep <= 1e-1
    assert s.minimum == pytest.approx(lrs[losses.index(min(losses))] / 10)
    with pytest.raises(ValueError, match="at least 3 finite losses"):
        suggest_lrs([1e-3, 1e-2], [1.0, float("nan")])


def test_lr_find_command(tmp_path, capsys):
    out = tmp_path / "lr.png"
    assert main(["lr-find", "--subset", "2048", "--bs", "64", "--num-it", "60",
                 "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "suggestions: valley" in capsys.readouterr().out
    assert main(["lr-find", "--start-lr", "1", "--end-lr", "0.1"]) == 2
    assert "--start-lr must be below --end-lr" in capsys.readouterr().err


@pytest.mark.parametrize("num_it", ["100", "30"])
def test_the_lr_find_plot_as_the_eye_reads_it(tmp_path, capsys, monkeypatch, num_it):
    """The plot passes the eye check (tests/eye.py: the curve and every suggestion's line in
    view, each line in the legend), its legend gives the suggestions the command printed, no
    more, no fewer, and its title says why one is missing, as the printed line does."""
    drawn = check_drawn_figures(monkeypatch)
    out = tmp_path / "lr.png"
    assert main(["lr-find", "--subset", "512", "--bs", "16", "--num-it", num_it,
                 "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert len(drawn) == 1 and out.read_bytes()[:4] == b"\x89PNG"
    printed = dict(re.findall(r"(valley|steep|minimum) ([0-9.e+-]+\d)", line))
    legend = dict(re.findall(r"(valley|steep|minimum): (\S+)", drawn[0]))
    assert printed == legend and ("suggestions: " in line) == bool(printed)
    texts = drawn[0].replace("\n", " ")
    if num_it == "30":
        assert "no reliable suggestion: a sweep of 30 steps is too short to trust" in texts
    assert ("no minimum: the loss was still falling" in texts) == ("Note: the loss was "
                                                                   "still falling" in line)
    assert ("no reliable suggestion" in texts) == ("no reliable suggestion" in line)


def test_a_sweep_that_never_turns_up_or_is_too_short_suggests_nothing():
    """A loss still falling at the sweep's end has no minimum to read: the suggestion would be
    an end of the range; a sweep of 30 steps is too short to trust."""
    from convscope.callbacks.lr_find import LRFindResult, never_turned_up, suggest_lrs

    lrs = [10 ** (-7 + 8 * i / 99) for i in range(100)]
    falling = [2.0 - i / 100 for i in range(100)]
    warning = never_turned_up(lrs, falling)
    assert warning.startswith("the loss was still falling at the sweep's end, lr 10")
    assert "--end-lr" in warning
    found = LRFindResult(lrs, falling, suggest_lrs(lrs, falling), None, warning)
    assert found.minimum is None and found.valley is not None  # no end of the range offered
    assert "no minimum. Note: the loss was still falling" in found.describe()
    short = learner().lr_find(num_it=30)
    assert not short.reliable and "a sweep of 30 steps is too short to trust" in short.reason
    assert "no reliable suggestion" in short.describe()
