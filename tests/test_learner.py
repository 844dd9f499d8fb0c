import io

import pytest
import torch
from conftest import stripes

from convscope.callbacks.progress import ProgressCallback
from convscope.callbacks.schedule import one_cycle_scheduler
from convscope.data import DataLoaders
from convscope.learner import (
    EVENTS,
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    Learner,
)
from convscope.models import simple_cnn
from convscope.optimizers import sgd


def make_learner(data=None, bs=64, **kwargs) -> Learner:
    data = data or stripes()
    torch.manual_seed(0)
    kwargs.setdefault("progress", False)
    return Learner(DataLoaders.from_data(data, bs=bs), simple_cnn(n_classes=4), **kwargs)


class EventLog(Callback):
    def __init__(self):
        self.events = []


for _event in EVENTS:  # a method per event that notes its name
    setattr(EventLog, _event, lambda self, e=_event: self.events.append(e))


def test_event_order_for_one_epoch():
    log = EventLog()
    learn = make_learner(stripes(64, 32), bs=32, cbs=[log])
    learn.fit(1, lr=1e-3)
    train_batch = ["before_batch", "after_pred", "after_loss", "after_backward", "after_step",
                   "after_batch"]
    valid_batch = ["before_batch", "after_pred", "after_loss", "after_batch"]
    assert log.events == (["before_fit", "before_epoch", "before_train"] + train_batch * 2
                          + ["after_train", "before_validate"] + valid_batch
                          + ["after_validate", "after_epoch", "after_fit"])


def test_every_event_has_a_documented_noop():
    for name in EVENTS:
        assert getattr(Callback, name).__doc__


def test_callbacks_reached_by_snake_case_name():
    class MyFancyCallback(Callback):
        pass

    class ActivationStats(Callback):
        pass

    learn = make_learner(cbs=[MyFancyCallback(), ActivationStats()], progress=True)
    assert isinstance(learn.my_fancy, MyFancyCallback)
    assert isinstance(learn.activation_stats, ActivationStats)
    assert isinstance(learn.progress, ProgressCallback)
    assert learn.recorder.learn is learn
    learn.remove_cb("my_fancy")
    assert not hasattr(learn, "my_fancy")
    with pytest.raises(ValueError, match=r"No callback named 'nope'. Attached: \['recorder'"):
        learn.remove_cb("nope")
    with pytest.raises(TypeError, match="Did you pass the class"):
        learn.add_cb(MyFancyCallback)


def test_callback_name_may_not_shadow_learner_attributes():
    class Model(Callback):
        pass

    with pytest.raises(ValueError, match="'model' clashes"):
        make_learner(cbs=[Model()])


def test_fit_only_callbacks_are_removed_after_fit():
    class Temp(Callback):
        pass

    learn = make_learner()
    learn.fit(1, cbs=[Temp()])
    assert not hasattr(learn, "temp") and all(c.name != "temp" for c in learn.cbs)


def test_fit_callbacks_give_back_the_callback_they_displaced():
    from convscope.callbacks import Recorder

    learn = make_learner()
    default = learn.recorder
    temporary = Recorder()
    learn.fit(1, cbs=[temporary])
    assert learn.recorder is default and temporary not in learn.cbs
    assert [c.name for c in learn.cbs].count("recorder") == 1
    learn.fit(1)  # and it still records
    assert len(learn.recorder.values) == 1


def test_remove_cb_of_a_detached_callback_says_so():
    learn = make_learner()
    stray = Callback()
    with pytest.raises(ValueError, match="Callback is not attached to this learner"):
        learn.remove_cb(stray)


def test_lr_find_runs_again_and_again_and_after_training():
    from matplotlib.figure import Figure

    learn = make_learner()
    first = learn.lr_find(num_it=60)
    second = learn.lr_find(num_it=60)
    assert first.lrs == second.lrs and first.losses == second.losses  # no trace in between
    assert first.reliable and first.valley is not None
    assert isinstance(first.plot(), Figure)
    assert "lr_finder" not in vars(learn)

    # a model trained on MNIST digits: its loss is low from the sweep's start and only rises
    from convscope.data import mnist

    torch.manual_seed(0)
    dls = DataLoaders.from_data(mnist().subset(4096, 1000, seed=0), bs=64, seed=0)
    learn = Learner(dls, simple_cnn(), progress=False)
    learn.fit_one_cycle(3, 0.03)
    trained = learn.lr_find(num_it=100)
    assert not trained.reliable and trained.valley is None and trained.minimum is None
    assert "trained already" in trained.reason and "no reliable suggestion" in \
        trained.describe()
    assert isinstance(trained.plot(), Figure)


class Counter(Callback):
    """A callback with state of its own: how many training batches it saw."""

    def __init__(self):
        self.seen = 0

    def after_step(self):
        self.seen += 1

    def state_dict(self):
        return {"seen": self.seen, "marks": torch.arange(self.seen)}

    def load_state_dict(self, state):
        self.seen = state["seen"]
        assert torch.equal(state["marks"], torch.arange(self.seen))


def test_every_callback_state_travels_with_a_checkpoint(tmp_path):
    learn = make_learner(cbs=[Counter()])
    learn.fit(2, lr=1e-2)
    learn.save(tmp_path / "c.safetensors")
    fresh = make_learner(cbs=[Counter()])
    fresh.load(tmp_path / "c.safetensors")
    assert fresh.counter.seen == learn.counter.seen == 8
    assert fresh.recorder.values == learn.recorder.values


@pytest.mark.parametrize("exc,where,expect_batches,expect_epochs", [
    (CancelBatchException, "after_pred", 0, 2),  # batches never step, epochs go on
    (CancelEpochException, "before_train", 0, 2),  # each epoch skipped, after_epoch still runs
    (CancelFitException, "after_step", 1, 0),  # stops after the first step
])
def test_cancel_exceptions(exc, where, expect_batches, expect_epochs):
    class Canceller(Callback):
        def __init__(self):
            self.steps = self.epochs = 0
            self.fit_ended = False

        def after_step(self):
            self.steps += 1
            if where == "after_step":
                raise exc

        def after_epoch(self):
            self.epochs += 1

        def after_fit(self):
            self.fit_ended = True

    c = Canceller()
    setattr(c, where, _raiser(exc)) if where != "after_step" else None
    learn = make_learner(cbs=[c])
    learn.fit(2)
    assert (c.steps, c.epochs, c.fit_ended) == (expect_batches, expect_epochs, True)


def _raiser(exc):
    def f():
        raise exc

    return f


def test_after_fit_runs_when_training_raises():
    class Boom(Callback):
        def __init__(self):
            self.cleaned = False

        def after_loss(self):
            raise RuntimeError("boom")

        def after_fit(self):
            self.cleaned = True

    boom = Boom()
    learn = make_learner(cbs=[boom])
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1)
    assert boom.cleaned


def test_fit_learns_the_toy_task():
    learn = make_learner()
    learn.fit(4, lr=1e-2)
    first, last = learn.recorder.values[0], learn.recorder.values[-1]
    assert last["valid_loss"] < first["valid_loss"]
    assert last["accuracy"] > 0.9
    assert learn.validate()["accuracy"] == pytest.approx(last["accuracy"])


def test_recorder_records_per_batch_and_per_epoch():
    learn = make_learner(bs=64)
    learn.fit(3, lr=1e-3)
    r = learn.recorder
    assert len(r.losses) == len(r.smooth_losses) == 3 * 4
    assert len(r.hps["lr"]) == len(r.hps["mom"]) == 12 and r.hps["lr"][0] == [1e-3]
    assert r.hps["mom"][0] == [0.9]  # AdamW's beta1
    assert [v["epoch"] for v in r.values] == [0, 1, 2]
    assert set(r.values[0]) == {"epoch", "train_loss", "valid_loss", "accuracy", "time"}
    assert r.values[0]["train_loss"] == pytest.approx(sum(r.losses[:4]) / 4)
    # smoothed loss: debiased EMA, so the first value equals the first loss
    assert r.smooth_losses[0] == pytest.approx(r.losses[0])
    b, avg = 0.98, 0.0
    for i, loss in enumerate(r.losses):
        avg = b * avg + (1 - b) * loss
        assert r.smooth_losses[i] == pytest.approx(avg / (1 - b ** (i + 1)), rel=1e-5)


def test_fit_rejects_bad_values():
    learn = make_learner()
    with pytest.raises(ValueError, match="n_epoch must be >= 0. Received: n_epoch=-1"):
        learn.fit(-1)
    with pytest.raises(ValueError, match="Learning rate must be > 0. Received: lr=0"):
        learn.fit(1, lr=0)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_one_cycle_matches_torch_one_cycle_lr(opt):
    """Same lr and momentum/beta1 as torch's OneCycleLR, batch for batch."""
    lr_max, div, div_final, pct = 0.05, 25.0, 1e5, 0.25
    learn = make_learner(bs=16, opt_func=sgd if opt == "sgd" else
                         (lambda p, lr: torch.optim.Adam(p, lr=lr)))
    learn.fit_one_cycle(3, lr_max, div=div, div_final=div_final, pct_start=pct)
    total = 3 * len(learn.dls.train)

    params = [torch.zeros(1, requires_grad=True)]
    ref_opt = (torch.optim.SGD(params, lr=0.1, momentum=0.9) if opt == "sgd"
               else torch.optim.Adam(params, lr=0.1))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        ref_opt, max_lr=lr_max, total_steps=total, pct_start=pct, div_factor=div,
        final_div_factor=div_final / div, base_momentum=0.85, max_momentum=0.95)
    ref_lr, ref_mom = [], []
    for _ in range(total):
        g = ref_opt.param_groups[0]
        ref_lr.append(g["lr"])
        ref_mom.append(g["momentum"] if opt == "sgd" else g["betas"][0])
        ref_opt.step()
        sched.step()
    got = learn.recorder.hps
    assert [h[0] for h in got["lr"]] == pytest.approx(ref_lr, rel=1e-9, abs=1e-12)
    assert [h[0] for h in got["mom"]] == pytest.approx(ref_mom, rel=1e-9)
    assert got["lr"][0][0] == pytest.approx(lr_max / div)
    assert max(h[0] for h in got["lr"]) == pytest.approx(lr_max)
    assert got["lr"][-1][0] == pytest.approx(lr_max / div_final)


@pytest.mark.parametrize("n_train, steps", [(16, 1), (48, 3), (96, 6), (128, 8)])
def test_the_recorded_schedule_says_what_a_fit_of_its_length_did(n_train, steps):
    """A 1cycle fit too short for a warm-up step starts at lr_max/div and anneals from its
    second step: its words give the rates it trained at, not a warm-up it did not get."""
    learn = make_learner(stripes(n_train, 16), bs=16)
    learn.fit_one_cycle(1, 0.02)
    words = learn.recorder.meta["callbacks"]["param_scheduler"]
    lrs = [h[0] for h in learn.recorder.hps["lr"]]
    assert len(lrs) == steps and words.startswith("1cycle")
    warmed = max(lrs) == pytest.approx(0.02)  # the peak is reached only after a warm-up
    assert ("up to 0.02 over the first 25% of the steps" in words) == warmed == (steps >= 8)
    if not warmed:
        assert f"a fit of {steps} step" in words
        assert f"lr {lrs[0]:.3g}" in words and f"{lrs[-1]:.3g}" in words
        assert steps == 1 or f"{lrs[1]:.3g}" in words


def test_one_cycle_rejects_bad_values():
    with pytest.raises(ValueError, match="pct_start must be in"):
        one_cycle_scheduler(0.1, pct_start=0)
    with pytest.raises(ValueError, match="lr_max must be > 0"):
        one_cycle_scheduler(-1)


def test_progress_prints_only_the_table_when_not_a_terminal():
    out = io.StringIO()
    learn = make_learner(cbs=[ProgressCallback(file=out)])
    learn.fit(2, lr=1e-2)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1"]
    assert lines[2].split()[-1].endswith("s")


def test_get_preds_restores_training_mode():
    learn = make_learner()
    learn.model.train()
    preds, targs = learn.get_preds()
    assert preds.shape == (128, 4) and targs.shape == (128,)
    assert learn.model.training


def test_learner_summary_uses_the_data_shape():
    s = make_learner().summary()
    assert s.input_shape == (1, 16, 16) and s.rows[-1]["output"] == (4,)
