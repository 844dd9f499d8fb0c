"""The detectors fire on runs that show their pattern and stay quiet on a healthy run."""

import pytest
import torch

from convscope.callbacks.activation_stats import ActivationStats
from convscope.callbacks.recorder import History
from convscope.data import DataLoaders, mnist
from convscope.diagnosis import Finding, Thresholds, diagnose
from convscope.learner import Learner
from convscope.models import simple_cnn
from convscope.optimizers import sgd


@pytest.fixture(scope="module")
def digits():
    return mnist().subset(4000, 2000, seed=0)


def run(data, bn, lr, one_cycle=False, opt_func=None, cbs=(), bs=64):
    torch.manual_seed(0)
    learn = Learner(DataLoaders.from_data(data, bs=bs), simple_cnn(bn=bn),
                    cbs=[ActivationStats(), *cbs], progress=False,
                    **({"opt_func": opt_func} if opt_func else {}))
    (learn.fit_one_cycle if one_cycle else learn.fit)(1, lr)
    return learn


def kinds(findings):
    return {(f.kind, f.layer) for f in findings}


def test_books_bad_run_dead_layers():
    """The book's bad run (no batchnorm, Adam at a constant 0.06) as its data looks: three
    layers' ReLUs dead over the last quarter, the loss stuck at chance. Built by hand: which
    layers die in a real run of it depends on the CPU's kernels."""
    n = 63
    dying = [0.5] * 10 + [1.0] * (n - 10)
    stats = synthetic([[0.5] * n, dying, dying, dying, [0.1] * n], [[1.0] * n] * 5)
    hist = History(losses=[2.3] * n, smooth_losses=[2.30 + 0.001 * (i % 3) for i in range(n)],
                   hps={"lr": [[0.06]] * n})
    findings = diagnose(stats=stats, history=hist)
    # three dead blocks, one cause: one finding naming them all, not three copies
    dead = [f for f in findings if f.kind == "dead_layer"]
    assert len(dead) == 1 and dead[0].message.startswith("Blocks 1, 2, 3: 100% of ")
    assert "Their ReLUs have died" in dead[0].suggestion
    assert ("stuck", None) in kinds(findings)
    assert dead[0].severity == "error" and dead[0].value > 0.99
    assert "batchnorm" in dead[0].suggestion and dead[0].batches == (47, 62)
    assert findings[0].severity == "error"  # most severe first


def test_books_good_run_is_healthy(digits):
    """With batchnorm and 1cycle: nothing fires."""
    findings = diagnose(run(digits, bn=True, lr=1e-2, one_cycle=True))
    assert [f.kind for f in findings] == ["healthy"]
    assert "looks healthy" in findings[0].message


def test_nan_loss_when_the_guard_is_off(digits):
    torch.manual_seed(0)
    learn = Learner(DataLoaders.from_data(digits, bs=64), simple_cnn(bn=False), opt_func=sgd,
                    cbs=[ActivationStats()], progress=False)
    learn.remove_cb("divergence_guard")
    learn.fit(1, 1e6)
    findings = diagnose(learn)
    nan = next(f for f in findings if f.kind == "nan_loss")
    assert nan.severity == "error" and "with lr 1e+06" in nan.message


def test_loss_spike_when_lr_jumps():
    """A schedule that jumps from 1e-3 to 2.0 for three batches mid-run, and the loss that
    jumps with it."""
    lrs = [2.0 if 40 <= i < 43 else 1e-3 for i in range(80)]
    losses = [0.5 - 0.002 * i for i in range(80)]
    losses[41:44] = [4.0, 9.0, 3.0]
    smooth = [sum(losses[max(0, i - 9):i + 1]) / len(losses[max(0, i - 9):i + 1])
              for i in range(80)]
    findings = diagnose(history=History(losses, smooth, {"lr": [[x] for x in lrs]}))
    spike = next(f for f in findings if f.kind == "loss_spike")
    assert spike.batches == (41, 43) and "near the peak" in spike.message
    assert "at batch 42" in spike.message and "lower lr_max" in spike.suggestion


def test_late_noise_on_a_tiny_loss_is_no_spike():
    """Late in a healthy run at batch size 128 the loss is about 0.03, and a batch with a
    digit or two wrong reads 0.1-0.18: over 3x the median, but no spike (measured on the
    default recipe's run)."""
    losses = [0.5 * 0.99 ** i + 0.03 for i in range(900)]
    for i, v in ((594, 0.1795), (704, 0.1365), (820, 0.161), (851, 0.1565)):
        losses[i] = v
    lrs = [1e-2 * (1 - i / 900) for i in range(900)]
    findings = diagnose(history=History(losses, losses, {"lr": [[x] for x in lrs]}))
    assert not [f for f in findings if f.kind == "loss_spike"], findings
    losses[820] = 0.4  # a jump of 0.37: flagged
    findings = diagnose(history=History(losses, losses, {"lr": [[x] for x in lrs]}))
    assert [f.batches for f in findings if f.kind == "loss_spike"] == [(820, 820)]


def test_loss_rise_when_lr_max_is_far_too_high():
    """A short 1cycle run up to lr 10 (79% accuracy in the end, no NaN, no spike window
    filled): the smoothed loss climbs during the warmup, and the verdict says lr_max is too
    high; a rise that small in absolute terms is noise, not a rise."""
    hist = History(losses=[1.0] * 8, smooth_losses=[2.0, 1.8, 1.7, 2.1, 2.2, 1.5, 1.2, 1.0],
                   hps={"lr": [[x] for x in (0.1, 0.5, 1, 1, 1, 0.5, 0.2, 0.1)]})
    short = Thresholds(min_steps=1)  # 8 steps: judged here for the pattern alone
    findings = diagnose(history=hist, thresholds=short)
    assert [f.kind for f in findings] == ["loss_rise"]
    assert "lower lr_max" in findings[0].suggestion and findings[0].value > 1.1
    hist.smooth_losses = [0.05, 0.04, 0.03, 0.04, 0.035, 0.03, 0.02, 0.01]
    assert [f.kind for f in diagnose(history=hist, thresholds=short)] == ["healthy"]
    assert [f.kind for f in diagnose(history=hist)] == ["too_little"]  # 8 steps: not healthy


def test_valid_gap_with_stale_batchnorm_statistics():
    """Batchnorm at lr 3.0: the running statistics lag, the valid loss is far above train."""
    values = [{"epoch": 0, "train_loss": 0.4, "valid_loss": 2.9, "accuracy": 0.31}]
    falling = [2.0 - 0.05 * i for i in range(30)]
    hist = History(falling, falling, {"lr": [[3.0]] * 30}, values)
    gap = next(f for f in diagnose(history=hist) if f.kind == "valid_gap")
    assert gap.value > 2 and "running statistics" in gap.suggestion
    values[0]["valid_loss"] = 0.45  # in line with train
    assert [f.kind for f in diagnose(history=hist)] == ["healthy"]


def synthetic(near_zero_rows, std_rows, lo=0.0):
    """ActivationStats holding given per-batch series (one list per layer)."""
    s = ActivationStats()
    s.layer_names = [str(i) for i in range(len(near_zero_rows))]
    s.batches = list(range(len(near_zero_rows[0])))
    s.ranges = [(lo, 10.0)] * len(near_zero_rows)
    s.stats = [torch.stack([torch.zeros(len(nz)), torch.tensor(sd), torch.tensor(nz)], dim=1)
               for nz, sd in zip(near_zero_rows, std_rows, strict=True)]
    s.hists = [torch.zeros(len(nz), 40) for nz in near_zero_rows]
    return s


def test_collapse_and_recovery_pattern():
    wave = ([0.5] * 10 + [0.97] * 5 + [0.4] * 5) * 3 + [0.5] * 20
    flat = [0.5] * 80
    stats = synthetic([wave, flat], [[1.0] * 80, [1.0] * 80])
    findings = diagnose(stats=stats)
    unstable = [f for f in findings if f.kind == "unstable"]
    assert [(f.layer, f.value) for f in unstable] == [("0", 3.0)]
    assert unstable[0].batches == (10, 79)


def test_collapse_and_explosion_over_time_and_across_layers():
    n = 40
    shrinking = [1.0 * 0.8 ** i for i in range(n)]
    growing = [1.0 * 1.3 ** i for i in range(n)]
    stats = synthetic([[0.5] * n] * 2, [shrinking, growing])
    found = kinds(diagnose(stats=stats))
    assert ("collapse", "0") in found and ("explode", "1") in found
    assert ("explode_across_layers", "1") in found


def test_healthy_when_nothing_fires_and_thresholds_configurable():
    stats = synthetic([[0.5] * 30], [[1.0] * 30])
    assert [f.kind for f in diagnose(stats=stats)] == ["healthy"]
    smooth = [2.0 - i / 30 for i in range(30)]
    hist = History(losses=[2.0, 1.0] * 15, smooth_losses=smooth, hps={"lr": [[0.1]] * 30})
    assert [f.kind for f in diagnose(history=hist)] == ["healthy"]
    dead = synthetic([[0.95] * 30], [[1.0] * 30])
    assert diagnose(stats=dead)[0].kind == "dead_layer"
    assert diagnose(stats=dead, thresholds=Thresholds(dead=0.96))[0].kind == "healthy"


def test_no_verdict_without_a_recorded_batch():
    """A fit of 0 epochs records nothing: it is not called healthy."""
    torch.manual_seed(0)
    learn = Learner(DataLoaders.from_data(mnist().subset(256, 64), bs=64), simple_cnn(),
                    cbs=[ActivationStats()], progress=False)
    learn.fit(0)
    assert [f.kind for f in diagnose(learn)] == ["nothing_recorded"]
    assert "Nothing to diagnose" in diagnose(learn)[0].message


def test_diagnose_needs_something_to_judge():
    with pytest.raises(ValueError, match="needs a Learner after fit"):
        diagnose()


def test_finding_reads_as_a_sentence():
    f = Finding("warning", "x", "Layer 2: 93% near zero.", "Add batchnorm.", layer="2")
    assert str(f) == "[warning] Layer 2: 93% near zero. Add batchnorm."
    assert f.to_dict()["layer"] == "2"


def hard_run(later=None):
    """A healthy run with HardExamples(0.1): 235 batches falling to about 0.07, then two
    epochs of 24 batches on the hardest images, whose loss starts near 0.35 and falls (the
    shape of `convscope train --hard 0.1 --epochs 3`: 0.06-0.11 at the end of the first
    epoch, 0.22-0.45 after)."""
    g = torch.Generator().manual_seed(0)
    first = [2.3 * 0.97 ** i + 0.065 for i in range(235)]
    later = later or [0.34 - 0.003 * i for i in range(24)] * 2
    losses = [v * (1 + 0.15 * float(torch.randn(1, generator=g))) for v in first + later]
    smooth, avg = [], None
    for i, v in enumerate(losses):  # the Recorder's debiased average
        avg = v * 0.02 if avg is None else avg + 0.02 * (v - avg)
        smooth.append(avg / (1 - 0.98 ** (i + 1)))
    lrs = [[0.02 * min(1.0, (i + 1) / 70) * (1 - i / 283)] for i in range(283)]
    return losses, smooth, lrs


def changed(*batches):
    """The Recorder's marks: the training set changed at each of these batches (to the
    6,000 of 60,000 images a later epoch draws)."""
    return [{"batch": b, "epoch": i + 1, "images": 6000, "of": 60000}
            for i, b in enumerate(batches)]


def test_a_hard_epochs_higher_loss_is_no_divergence():
    """The diagnosis judges the stretches between the Recorder's marks on their own, without
    knowing which callback changed the training set or why."""
    losses, smooth, lrs = hard_run()
    hist = History(losses, smooth, {"lr": lrs}, [{}] * 3, {}, epoch_ends=[235, 259, 283],
                   marks=changed(235, 259))
    assert [f.kind for f in diagnose(history=hist)] == ["healthy"]
    # the same losses without marks (the training set never changed): a divergence
    plain = History(losses, smooth, {"lr": lrs}, [{}] * 3, {}, epoch_ends=[235, 259, 283])
    assert "diverged" in [f.kind for f in diagnose(history=plain)]
    # a fit stopped in its third epoch, whose hardest images read higher than the second's:
    # the batches past the last epoch end stand on their own too
    later = [0.2 - 0.002 * i for i in range(24)] + [0.45 - 0.003 * i for i in range(24)]
    losses, smooth, lrs = hard_run(later)
    stopped = History(losses[:275], smooth[:275], {"lr": lrs[:275]}, [{}] * 2, {},
                      epoch_ends=[235, 259], marks=changed(235, 259))
    assert [f.kind for f in diagnose(history=stopped)] == ["healthy"]


def test_a_hard_epoch_that_climbs_or_spikes_is_still_flagged():
    climbing = [0.34 - 0.003 * i for i in range(24)] + [0.34 + 0.03 * i for i in range(24)]
    losses, smooth, lrs = hard_run(climbing)
    hist = History(losses, smooth, {"lr": lrs}, [{}] * 3, {}, epoch_ends=[235, 259, 283],
                   marks=changed(235, 259))
    found = next(f for f in diagnose(history=hist) if f.kind == "diverged")
    assert found.batches == (259, 282) and "From batch 259 on, where the training set " \
        "changed" in found.message
    spiking = [0.34 - 0.003 * i for i in range(24)] * 2
    spiking[40] = 2.0
    losses, smooth, lrs = hard_run(spiking)
    hist = History(losses, smooth, {"lr": lrs}, [{}] * 3, {}, epoch_ends=[235, 259, 283],
                   marks=changed(235, 259))
    assert [f.batches for f in diagnose(history=hist) if f.kind == "loss_spike"] == [
        (275, 275)]


def test_advice_fits_the_schedule_the_run_used():
    """A run that used fit_one_cycle is not told to use fit_one_cycle: it is told to warm up
    longer or lower the peak; a run at a constant rate is told to warm up and anneal."""
    values = [{"epoch": 0, "train_loss": 0.4, "valid_loss": 2.9, "accuracy": 0.31}]
    falling = [2.0 - 0.05 * i for i in range(30)]
    nan = [*falling[:10], float("nan")]
    cycle = {"callbacks": {"param_scheduler": "1cycle: lr 0.004 up to 0.1 ..."}}
    for meta, lrs, warm, cool in (
            (cycle, [[0.1]] * 30, "a larger pct_start in fit_one_cycle",
             "lower the peak (lr_max) of fit_one_cycle"),
            ({}, [[3.0]] * 30, "warm it up (fit_one_cycle)",
             "lower the learning rate or anneal it (fit_one_cycle)"),
            ({}, [[0.01 * (i + 1)] for i in range(15)] + [[0.01 * (30 - i)] for i in range(15)],
             "a larger pct_start in fit_one_cycle", "lower the peak (lr_max)")):
        gap = next(f for f in diagnose(history=History(falling, falling, {"lr": lrs}, values,
                                                       meta)) if f.kind == "valid_gap")
        assert cool in gap.suggestion, (meta, gap.suggestion)
        found = diagnose(history=History(nan, nan, {"lr": lrs}, [], meta))
        assert warm in next(f for f in found if f.kind == "nan_loss").suggestion, meta


def _gradient_stats(column: str, values: list[float], later_half: bool = False):
    """GradientStats of Conv2d layers 0.0, 1.0, ... over 8 batches, each 1 everywhere but in
    `column`, which is that layer's value (in every batch, or the later four only)."""
    from convscope.callbacks.gradient_stats import COLUMNS, GradientStats

    g = GradientStats()
    g.layer_names = [f"{i}.0" for i in range(len(values))]
    g.layer_types = ["Conv2d"] * len(values)
    g.batches = list(range(8))
    g.records = torch.ones(len(values), 8, len(COLUMNS))
    for i, v in enumerate(values):
        g.records[i, 4 if later_half else 0:, COLUMNS.index(column)] = v
    return g


def test_many_layers_with_large_steps_are_one_finding():
    """A few layers with steps far too large are named one by one; many, as a tiny run at a
    high rate gives, are one finding naming them all, not a wall of warnings."""
    def gstats(ratios):
        return _gradient_stats("update_ratio", ratios)

    two = [f for f in diagnose(gradients=gstats([0.5, 0.3, 1e-3, 1e-3])) if
           f.kind == "large_updates"]
    assert [f.layer for f in two] == ["0.0", "1.0"]
    many = [f for f in diagnose(gradients=gstats([0.5, 0.3, 2.9, 0.2, 1e-3])) if
            f.kind == "large_updates"]
    assert len(many) == 1 and many[0].layer == "2.0"
    assert many[0].message.startswith("4 layers' steps are 20% to 290% of their weights")
    assert "Layers: 0.0, 1.0, 2.0, 3.0." in many[0].message


def test_many_layers_whose_gradients_grew_are_one_finding():
    """Gradient norms that grew in one or two layers are named one by one; in many layers
    (one cause: the learning rate) they are one finding naming them all."""
    def gstats(growths):
        return _gradient_stats("grad_norm", growths, later_half=True)

    two = [f for f in diagnose(gradients=gstats([150, 1, 200, 1])) if
           f.kind == "exploding_gradients"]
    assert [(f.layer, round(f.value)) for f in two] == [("0.0", 150), ("2.0", 200)]
    many = [f for f in diagnose(gradients=gstats([150, 1, 200, 120, 900])) if
            f.kind == "exploding_gradients"]
    assert len(many) == 1 and (many[0].layer, round(many[0].value)) == ("4.0", 900)
    assert many[0].message == ("4 layers' gradient norms grew 120x to 900x over training "
                               "(most, layer 4.0: 1 -> 900). Layers: 0.0, 2.0, 3.0, 4.0."), \
        many[0].message


def test_a_run_too_short_to_judge_says_so_first():
    """The caveat comes before the judgments it weakens, errors included."""
    values = [{"epoch": 0, "train_loss": 2.3, "valid_loss": 2.3, "accuracy": 0.09}]
    hist = History([2.3] * 8, [2.3] * 8, {"lr": [[0.1]] * 8}, values,
                   {"n_train": 100, "n_valid": 10000, "n_classes": 10})
    findings = diagnose(history=hist)
    assert findings[0].kind == "too_little" and "chance" in [f.kind for f in findings]
