import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import StopAt, cli_error, stripes
from safetensors.torch import load_file, save_file

from convscope.callbacks import CheckpointCallback, GracefulStop
from convscope.checkpoint import read_checkpoint
from convscope.cli import main
from convscope.data import DataLoaders
from convscope.errors import TrainingDivergedError
from convscope.learner import Callback, Learner
from convscope.models import simple_cnn
from convscope.optimizers import sgd

WORKER = Path(__file__).parent / "kill_worker.py"


def learner(cbs=(), widths=(8, 16, 32, 64), bn=True, **kw) -> Learner:
    torch.manual_seed(0)
    dls = DataLoaders.from_data(stripes(192, 64), bs=32, seed=0)
    return Learner(dls, simple_cnn(n_classes=4, widths=widths, bn=bn), cbs=list(cbs),
                   progress=False, **kw)


def weights(learn):
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_save_load_roundtrip_restores_everything(tmp_path):
    learn = learner()
    learn.fit(2, lr=1e-2)
    learn.save(tmp_path / "c.safetensors")
    tensors, meta = read_checkpoint(tmp_path / "c.safetensors")
    assert {"rng.torch", "rng.loader"} <= set(tensors)
    assert meta["position"] == {"epoch": 2, "batch": 0, "train_iter": 12, "n_epoch": 2}
    fresh = learner(widths=(8, 16, 32, 64))
    fresh.load(tmp_path / "c.safetensors")
    assert_same(weights(learn), weights(fresh))
    a, b = learn.opt.state_dict(), fresh.opt.state_dict()
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(v, b["state"][pid][k])
    assert fresh.recorder.losses == learn.recorder.losses
    assert fresh.recorder.values == learn.recorder.values


def test_resume_mid_epoch_equals_uninterrupted(tmp_path):
    """Stop in the middle of epoch 1, resume from the last checkpoint in a fresh learner:
    the weights and the recorded history end bit for bit as in an uninterrupted run."""
    ref = learner([CheckpointCallback(tmp_path / "ref.safetensors", every_batches=2)])
    ref.fit_one_cycle(3, 1e-2)

    ck = tmp_path / "c.safetensors"  # stopped after batch 4; the checkpoint is after batch 3
    learner([CheckpointCallback(ck, every_batches=2), StopAt(1, 4)]).fit_one_cycle(3, 1e-2)
    assert read_checkpoint(ck)[1]["position"] == {"epoch": 1, "batch": 4, "train_iter": 10,
                                                  "n_epoch": 3}
    resumed = learner([CheckpointCallback(ck, every_batches=2)])
    resumed.fit_one_cycle(3, 1e-2, resume=ck)
    assert_same(weights(ref), weights(resumed))
    assert resumed.recorder.losses == ref.recorder.losses
    assert resumed.recorder.hps == ref.recorder.hps
    assert [v["train_loss"] for v in resumed.recorder.values] == [
        v["train_loss"] for v in ref.recorder.values]


def test_resume_mid_epoch_restores_activation_stats_and_grad_scaler(tmp_path):
    """Callbacks' state resumes with the weights: ActivationStats ends tensor for tensor as
    in an uninterrupted run, and fp16's loss scale continues where it was."""
    from convscope.callbacks import ActivationStats, MixedPrecision

    def cbs(ck):
        return [CheckpointCallback(ck, every_batches=2), ActivationStats(),
                MixedPrecision("fp16", init_scale=2.0**20)]

    with pytest.warns(UserWarning, match="fp16 mixed precision on cpu"):
        ref = learner(cbs(tmp_path / "ref.safetensors"))
        ref.fit_one_cycle(2, 1e-2)

    ck = tmp_path / "c.safetensors"
    with pytest.warns(UserWarning):
        learner([*cbs(ck), StopAt(1, 3)]).fit_one_cycle(2, 1e-2)
    saved_scale = read_checkpoint(ck)[1]["callbacks"]["mixed_precision"]["scaler"]["scale"]
    with pytest.warns(UserWarning):
        resumed = learner(cbs(ck))
        resumed.fit_one_cycle(2, 1e-2, resume=ck)
    assert saved_scale < 2.0**20  # the scaler had halved: a fresh one would start over
    assert resumed.mixed_precision.scaler.get_scale() == ref.mixed_precision.scaler.get_scale()
    assert_same(weights(ref), weights(resumed))
    a, b = ref.activation_stats, resumed.activation_stats
    assert a.batches == b.batches == list(range(12))
    for i in range(len(a.layer_names)):
        assert torch.equal(a.stats[i], b.stats[i]) and torch.equal(a.hists[i], b.hists[i])


def test_resume_in_another_world_size_is_refused(tmp_path):
    from safetensors.torch import load_file as load_tensors
    from safetensors.torch import save_file as save_tensors

    ck = tmp_path / "c.safetensors"
    learner([CheckpointCallback(ck)]).fit_one_cycle(2, 1e-2)
    tensors, meta = load_tensors(ck), read_checkpoint(ck)[1]
    assert meta["world"] == {"world_size": 1, "global_bs": 32}
    from safetensors import safe_open

    with safe_open(str(ck), "pt") as f:
        raw = f.metadata()
    raw["world"] = json.dumps({"world_size": 2, "global_bs": 64})  # as a 2-process run writes
    save_tensors(tensors, str(ck), metadata=raw)
    with pytest.raises(ValueError, match=r"written by a run in 2 processes \(global batch 64\); "
                                         r"this one runs in 1. Resume it in 2: `convscope "
                                         r"train --resume RUN_DIR --nproc 2`"):
        learner().fit_one_cycle(2, 1e-2, resume=ck)
    learner().load(ck)  # outside a fit (weights for inference, say) it loads


def test_resume_with_another_length_is_refused(tmp_path):
    learn = learner([CheckpointCallback(tmp_path / "c.safetensors")])
    learn.fit_one_cycle(2, 1e-2)
    with pytest.raises(ValueError, match="from a fit of 2 epochs; resume it with n_epoch=2"):
        learner().fit_one_cycle(3, 1e-2, resume=tmp_path / "c.safetensors")


def test_bad_checkpoints_get_clear_errors(tmp_path):
    learn = learner()
    learn.fit(1)
    good = learn.save(tmp_path / "good.safetensors")
    payload = good.read_bytes()
    (tmp_path / "trunc").write_bytes(payload[: len(payload) // 2])
    (tmp_path / "garbage").write_bytes(os.urandom(4096))
    save_file({"w": torch.zeros(3)}, str(tmp_path / "foreign"))
    cases = {
        "trunc": "trunc: cannot be read as a convscope checkpoint",
        "garbage": "garbage: cannot be read as a convscope checkpoint",
        "foreign": "foreign: not a convscope checkpoint",
        "missing": r"No such file: .*missing' \(expected a convscope checkpoint\)",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            learner().load(tmp_path / name)
    with pytest.raises(ValueError, match=r"another architecture; .*shapes differ: "
                                         r"0\.0\.weight checkpoint \(8, 1, 5, 5\) vs model "
                                         r"\(4, 1, 5, 5\)"):
        learner(widths=(4, 16, 32, 64)).load(good)
    with pytest.raises(ValueError, match="not in the model: 4.0.weight"):
        learner(widths=(8, 16, 32)).load(good)


def test_divergence_guard_stops_before_the_step(tmp_path):
    ck = tmp_path / "c.safetensors"
    learn = learner([CheckpointCallback(ck)], opt_func=sgd, bn=False)
    learn.fit(1, lr=0.01)
    good = weights(learn)
    saved_at = ck.stat().st_mtime_ns
    with pytest.raises(TrainingDivergedError, match=r"Training diverged at epoch 0, batch \d+ "
                                                    r".*learning rate 1e\+08.*lower learning"):
        learn.fit(1, lr=1e8)
    assert ck.stat().st_mtime_ns == saved_at  # no checkpoint after the bad batch
    for k, v in weights(learn).items():
        assert torch.isfinite(v.float()).all(), k  # the NaN gradient was never applied
    assert good.keys() == weights(learn).keys()


def test_cli_divergence_is_one_line_and_exit_3(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--lr", "1000", "--no-bn", "--schedule", "constant", "--subset",
                 "640", "--bs", "64", "--epochs", "1", "--no-stats", "--out", str(run)]) == 3
    err = capsys.readouterr().err
    assert cli_error(err).startswith("convscope: Training diverged at epoch")
    assert not (run / "model.safetensors").exists()  # no final weights from a diverged run


def test_cli_resume_without_config_or_checkpoint(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err
    # a run stopped before its first checkpoint starts again from the start, with its settings
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 1, "subset": 640, "bs": 64,
                                                      "stats": False}))
    assert main(["train", "--resume", str(tmp_path)]) == 0
    assert "has no checkpoint yet" in capsys.readouterr().out
    assert (tmp_path / "report.html").is_file()


def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path):
    """A training process SIGKILLs itself in the middle of an epoch (at a batch it is told,
    three batches past a checkpoint); resumed, the final weights, the activation statistics
    and the Recorder's history equal an uninterrupted run's bit for bit, and every batch is
    trained exactly once (counting from the checkpoint the resumed run started at)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run([sys.executable, str(WORKER), str(ref)], check=True, env=env, timeout=300)

    proc = subprocess.run([sys.executable, str(WORKER), str(run), "--die-at", "1", "6"],
                          env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final.safetensors").exists()
    position = read_checkpoint(run / "ckpt.safetensors")[1]["position"]
    # 24 batches an epoch, a checkpoint after every 4th: the last one before the kill is
    # after batch 3 of epoch 1; batches 4-6 were trained and lost
    assert position == {"epoch": 1, "batch": 4, "train_iter": 28, "n_epoch": 3}
    killed_log = (run / "batches.log").read_text().splitlines()
    assert len(killed_log) == 24 + 7

    subprocess.run([sys.executable, str(WORKER), str(run), "--resume"], check=True, env=env,
                   timeout=300)
    assert_same(load_file(ref / "final.safetensors"), load_file(run / "final.safetensors"))
    ref_stats, run_stats = (load_file(d / "stats.safetensors") for d in (ref, run))
    assert_same(ref_stats, run_stats)  # every recorded batch, once, as in the reference
    assert len(run_stats["batches"]) == 72
    ref_history = json.loads((ref / "history.json").read_text())
    run_history = json.loads((run / "history.json").read_text())
    for key in ("losses", "smooth_losses", "hps"):
        assert run_history[key] == ref_history[key], key

    ref_log = (ref / "batches.log").read_text().splitlines()
    resumed_log = (run / "batches.log").read_text().splitlines()[len(killed_log):]
    kept = killed_log[: position["train_iter"]]  # what the checkpoint had taken in
    assert kept + resumed_log == ref_log  # no batch twice, none skipped, same data order


def test_ctrl_c_stops_between_batches_with_a_checkpoint_to_resume(tmp_path, capsys):
    """The first SIGINT lets the batch finish, saves its position and exits 130 with a line
    saying how to resume; the resumed run completes every epoch with every recorded batch's
    activation statistics; resuming the complete run changes no file."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "convscope", "train", "--recipe", "fast",
                             "--hard", "0.4", "--subset", "12000", "--bs", "64", "--epochs",
                             "4", "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # off a terminal, one row per finished epoch
        if line.startswith("0 "):
            break
    proc.send_signal(signal.SIGINT)  # at the end of epoch 0 or during epoch 1
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    position = read_checkpoint(run / "checkpoint.safetensors")[1]["position"]
    assert f"stopped at epoch {position['epoch']}, batch {position['batch']} of 4" in last
    assert f"`convscope train --resume {run}`" in last
    assert position["epoch"] >= 1 and not (run / "model.safetensors").exists()

    assert main(["train", "--resume", str(run)]) == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    stats = load_file(run / "activation_stats.safetensors")
    # one batch in 8 at bs 64 (the recipe's one per 512 images), none lost to the stop: 188
    # batches in epoch 0, 75 in each later one (the hardest 40%: 4,800 images)
    assert stats["batches"].tolist() == list(range(0, 188 + 3 * 75, 8))
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--resume", str(run)]) == 0  # once more: the run is complete
    assert "is complete (4 epochs trained" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


class PressCtrlC(Callback):
    """Sends this process SIGINT after the given training batches, as a user's Ctrl-C."""

    order = 50

    def __init__(self, at, times=1):
        self.at, self.times = at, times

    def after_step(self):
        if (self.learn.epoch, self.learn.iter) == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


def test_graceful_stop_in_process(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    ck = tmp_path / "c.safetensors"
    learn = learner([CheckpointCallback(ck), GracefulStop(), PressCtrlC((0, 2))])
    learn.fit(2, 1e-2)  # returns: the fit was cancelled, not broken
    assert learn.graceful_stop.stopped_at == (0, 3)
    assert read_checkpoint(ck)[1]["position"] == {"epoch": 0, "batch": 3, "train_iter": 3,
                                                  "n_epoch": 2}
    assert signal.getsignal(signal.SIGINT) is before

    # a second Ctrl-C does not wait for the batch to end
    learn = learner([GracefulStop(), PressCtrlC((0, 1), times=2)])
    with pytest.raises(KeyboardInterrupt):
        learn.fit(2, 1e-2)
    assert signal.getsignal(signal.SIGINT) is before
