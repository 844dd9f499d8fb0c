"""TensorBoardCallback, read back with TensorBoard's own reader: what `convscope train
--tensorboard` writes, each step exactly once across a stop and a resume, and what it does
without the tensorboard package or off the first process."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import StopAt, stripes

from convscope.callbacks import (
    ActivationStats,
    CheckpointCallback,
    GradientStats,
    TensorBoardCallback,
)
from convscope.callbacks.tensorboard import MISSING
from convscope.cli import main
from convscope.data import DataLoaders
from convscope.errors import UsageError
from convscope.learner import Learner
from convscope.models import simple_cnn

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_events(folder):
    """Every event in `folder`, as TensorBoard shows them (purges applied, nothing sampled)."""
    acc = event_accumulator.EventAccumulator(
        str(folder), size_guidance={k: 0 for k in event_accumulator.DEFAULT_SIZE_GUIDANCE})
    acc.Reload()
    return acc


def steps(acc, tag, kind="Scalars"):
    return [e.step for e in getattr(acc, kind)(tag)]


def test_cli_run_writes_curves_histograms_and_images(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--tensorboard", "--subset", "640", "--bs", "64", "--epochs", "2",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    history = json.loads((run / "history.json").read_text())
    n = len(history["losses"])
    ends = [e - 1 for e in history["epoch_ends"]]  # each epoch's last training step
    assert n == 20 and ends == [9, 19]
    acc = read_events(run / "tensorboard")
    tags = acc.Tags()

    assert steps(acc, "train/loss") == list(range(n))
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(history["losses"],
                                                                         rel=1e-6)
    assert [e.value for e in acc.Scalars("hp/lr")] == pytest.approx(
        [g[0] for g in history["hps"]["lr"]], rel=1e-6)
    assert steps(acc, "hp/mom") == list(range(n))
    for tag, key in (("valid/loss", "valid_loss"), ("valid/accuracy", "accuracy")):
        assert steps(acc, tag) == ends
        assert [e.value for e in acc.Scalars(tag)] == pytest.approx(
            [v[key] for v in history["values"]], rel=1e-6)

    # the statistics of every recorded batch (one in 512 // 64 = 8), per layer
    layers = [t.split("/", 1)[1] for t in tags["histograms"]]
    assert layers and all(t.startswith("activations/") for t in tags["histograms"])
    for layer in layers:
        assert steps(acc, f"activations/{layer}", "Histograms") == [0, 8, 16]
        assert steps(acc, f"near_zero/{layer}") == [0, 8, 16]
        h = acc.Histograms(f"activations/{layer}")[0].histogram_value
        assert h.num == sum(h.bucket) > 0 and h.min <= h.max
    assert any(t.startswith("grad_norm/") for t in tags["scalars"])
    assert steps(acc, "update_ratio/0.0") == [0, 8, 16]

    assert steps(acc, "data/batch", "Images") == [0]
    assert {f"color_dim/{layer}" for layer in layers} <= set(tags["images"])
    assert steps(acc, f"color_dim/{layers[0]}", "Images") == [n - 1]
    image = acc.Images(f"color_dim/{layers[0]}")[0]
    assert image.width > 100 and image.height > 100


def learner(cbs):
    torch.manual_seed(0)
    dls = DataLoaders.from_data(stripes(192, 64), bs=32, seed=0)  # 6 batches an epoch
    # one hooked block: drawing each block's color_dim at the end is most of a fit's time here
    stats = ActivationStats(filter=lambda name, module: name == "1")
    return Learner(dls, simple_cnn(n_classes=4, widths=(8, 16, 32, 64)),
                   cbs=[stats, GradientStats(), *cbs], progress=False)


@pytest.mark.parametrize("killed", [False, True], ids=["stopped", "killed"])
def test_resumed_fit_writes_each_step_exactly_once(tmp_path, killed):
    """Stopped at step 9 with the last checkpoint at step 8 (every 2 batches), then resumed
    in a fresh learner: the event files read as an uninterrupted run's, step for step.

    stopped: the fit ends by CancelFitException, so after_fit writes steps 8 and 9, which the
    resumed fit's purge_step drops. killed: as by SIGKILL, after_fit never runs; the losses
    were written live after every batch (step 8 past the checkpoint: purged), the
    statistics of steps 6 and 7 only by the checkpoint (else a resume would lack them)."""
    ref = tmp_path / "ref"
    learner([TensorBoardCallback(ref)]).fit_one_cycle(2, 1e-2)

    ck, tb = tmp_path / "c.safetensors", tmp_path / "tb"
    cb = TensorBoardCallback(tb, live_secs=1e-9 if killed else 20.0)
    if killed:
        cb.after_fit = lambda: None
    stopped = learner([CheckpointCallback(ck, every_batches=2), cb, StopAt(1, 3)])
    stopped.fit_one_cycle(2, 1e-2)
    assert stopped.train_iter == 9
    if killed:
        cb.writer.close()  # what the OS does with a killed process's open file
    seen = read_events(tb)
    assert steps(seen, "train/loss") == list(range(9 if killed else 10))
    assert steps(seen, "activations/1", "Histograms") == list(range(8 if killed else 10))
    learner([CheckpointCallback(ck, every_batches=2), TensorBoardCallback(tb)]).fit_one_cycle(
        2, 1e-2, resume=ck)

    a, b = read_events(ref), read_events(tb)
    assert steps(b, "train/loss") == steps(a, "train/loss") == list(range(12))
    assert [e.value for e in b.Scalars("train/loss")] == pytest.approx(
        [e.value for e in a.Scalars("train/loss")], rel=1e-5)
    for tag in ("hp/lr", "valid/loss", "valid/accuracy", "grad_norm/0.0"):
        assert steps(b, tag) == steps(a, tag), tag
    assert steps(a, "valid/loss") == [5, 11]
    hist = a.Tags()["histograms"]
    assert hist == b.Tags()["histograms"] == ["activations/1"]
    for tag in hist:  # every batch recorded: steps 0..7 from the stopped fit, 8.. resumed
        assert steps(b, tag, "Histograms") == steps(a, tag, "Histograms") == list(range(12))
    assert steps(b, "data/batch", "Images") == [0]


def test_missing_tensorboard_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    learn = learner([TensorBoardCallback(tmp_path / "tb")])
    with pytest.raises(UsageError) as err:
        learn.fit(1, 1e-2)
    assert str(err.value).startswith(MISSING)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "tb").exists()


def test_only_the_first_process_writes(tmp_path):
    learn = learner([TensorBoardCallback(tmp_path / "tb")])
    learn.distributed = SimpleNamespace(info=SimpleNamespace(is_main=False))  # rank 1's view
    learn.fit(1, 1e-2)
    assert not (tmp_path / "tb").exists()
    assert learn.tensor_board.writer is None and not TensorBoardCallback.run_in_lr_find


def test_importing_convscope_needs_no_tensorboard():
    code = ("import sys; sys.modules['tensorboard'] = sys.modules['torch.utils.tensorboard'] "
            "= None; import convscope.cli, convscope.run.train; "
            "from convscope.callbacks import TensorBoardCallback; TensorBoardCallback('tb')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
