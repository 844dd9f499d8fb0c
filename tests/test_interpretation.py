"""Interpretation, gradient statistics and honest verdicts: what went wrong, per class and per
layer."""

import warnings

import torch
from conftest import stripes, write_idx_folder
from torch import nn

from convscope.callbacks import GradientStats, ValidPreds
from convscope.cli import main
from convscope.data import DataLoaders
from convscope.diagnosis import diagnose
from convscope.interpretation import Interpretation
from convscope.learner import Callback, Learner
from convscope.models import simple_cnn
from convscope.optimizers import sgd


class OneClass(nn.Module):
    """A model that always predicts class 2."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(len(x), 4, device=x.device) + self.w
        out[:, 2] = 5.0
        return out


def test_confusion_matrix_of_a_model_that_always_predicts_one_class():
    dls = DataLoaders.from_data(stripes(64, 100), bs=32)
    it = Interpretation.from_learner(Learner(dls, OneClass(), progress=False))
    cm = it.confusion_matrix()
    assert cm.sum() == 100 and (cm[:, [0, 1, 3]] == 0).all() and (cm[:, 2] > 0).all()
    assert [r["accuracy"] for r in it.per_class_accuracy()][2] == 1.0
    assert {r["accuracy"] for i, r in enumerate(it.per_class_accuracy()) if i != 2} == {0.0}
    assert all(p == "c" for _, p, _ in it.most_confused())
    top = it.top_losses(3)
    assert [t["predicted"] for t in top] == ["c"] * 3 and top[0]["loss"] >= top[-1]["loss"]


def test_interpretation_saves_and_loads_with_its_top_loss_images(tmp_path):
    torch.manual_seed(0)
    learn = Learner(DataLoaders.from_data(stripes(), bs=64), simple_cnn(n_classes=4),
                    progress=False)
    learn.fit(1, 1e-2)
    it = Interpretation.from_learner(learn)
    it.save(tmp_path / "i.safetensors", k=5)
    back = Interpretation.load(tmp_path / "i.safetensors")
    assert torch.equal(back.confusion_matrix(), it.confusion_matrix())
    assert back.top_losses(5) == it.top_losses(5)
    assert len(back.plot_top_losses(5).axes) >= 5


def test_the_last_validation_pass_gives_the_same_interpretation_as_a_new_pass():
    torch.manual_seed(0)
    learn = Learner(DataLoaders.from_data(stripes(256, 100), bs=32), simple_cnn(n_classes=4),
                    cbs=[ValidPreds()], progress=False)
    assert not learn.valid_preds.complete()  # nothing validated yet
    learn.fit(1, 1e-2)
    kept = learn.valid_preds
    assert kept.complete() and kept.preds.shape == (100, 4)
    again = Interpretation.from_learner(learn)
    it = Interpretation.from_preds(kept.preds, kept.targs, learn.dls.classes,
                                   images=learn.dls.valid.x)
    assert torch.equal(it.preds, again.preds) and torch.equal(it.targs, again.targs)
    assert torch.allclose(it.losses, again.losses, atol=1e-5)
    assert torch.equal(it.images, again.images)
    learn.validate()  # a pass outside fit leaves the kept outputs alone
    assert kept.complete()


def test_a_run_writes_its_interpretation_without_another_pass_over_the_valid_set(
        tmp_path, monkeypatch):
    """A run's outputs read the last validation's outputs (ValidPreds) instead of running the
    valid set again; a finished run whose outputs were cut short has no kept outputs and
    makes the pass."""
    from convscope.config import TrainConfig
    from convscope.run import run_training

    passes = []
    real = Learner.get_preds
    monkeypatch.setattr(Learner, "get_preds",
                        lambda learn, dl=None: passes.append(1) or real(learn, dl))
    write_idx_folder(tmp_path / "data", n_train=64, n_valid=30, size=16)
    cfg = TrainConfig(data=str(tmp_path / "data"), epochs=1, bs=16, out=str(tmp_path / "r"),
                      stats=False, tta=False)
    run_training(cfg, log=lambda *a: None)
    kept = Interpretation.load(tmp_path / "r" / "interpretation.safetensors")
    assert passes == [] and len(kept) == 30
    (tmp_path / "r" / "interpretation.safetensors").unlink()
    (tmp_path / "r" / "report.html").unlink()
    run_training(cfg, log=lambda *a: None, resume=True)
    again = Interpretation.load(tmp_path / "r" / "interpretation.safetensors")
    assert passes == [1] and torch.equal(again.preds, kept.preds)


class ShrinkGrads(Callback):
    """Scales the gradients of one layer down a thousandfold, before the step."""

    order = -30

    def __init__(self, layer):
        self.layer = layer

    def after_backward(self):
        for p in self.layer.parameters():
            p.grad.mul_(1e-3)


def run(cbs=(), shrink=False):
    torch.manual_seed(0)
    model = simple_cnn(n_classes=4)
    extra = [ShrinkGrads(model[2][0])] if shrink else []
    learn = Learner(DataLoaders.from_data(stripes(1024, 256), bs=32), model, opt_func=sgd,
                    cbs=[GradientStats(), *extra, *cbs], progress=False)
    learn.fit_one_cycle(2, 0.1)
    return learn


def test_a_layer_whose_gradients_shrink_a_thousandfold_barely_learns():
    found = diagnose(run(shrink=True))
    barely = [f for f in found if f.kind == "barely_learning"]
    assert [f.layer for f in barely] == ["2.0"], found
    assert "smaller than the other Conv2d layers' median" in barely[0].message
    assert not [f for f in diagnose(run()) if f.kind == "barely_learning"]


def test_gradient_stats_record_every_step_and_resume(tmp_path):
    from convscope.callbacks import CheckpointCallback

    learn = run()
    g = learn.gradient_stats
    assert g.layer_names[:3] == ["0.0", "0.1", "1.0"]  # the summary's numbering
    assert g.records.shape == (10, 64, 3) and g.batches == list(range(64))
    assert (g.series("update_ratio", "0.0") > 0).all()
    g.save(tmp_path / "g.safetensors")
    back = GradientStats.load(tmp_path / "g.safetensors")
    assert torch.equal(back.records, g.records) and back.layer_names == g.layer_names
    ck = tmp_path / "c.safetensors"
    learn = run([CheckpointCallback(ck)])
    fresh = Learner(learn.dls, simple_cnn(n_classes=4), opt_func=sgd, cbs=[GradientStats()],
                    progress=False)
    fresh.load(ck)
    assert torch.equal(fresh.gradient_stats.records, learn.gradient_stats.records)


class Direct(Callback):
    """Per layer, the norms GradientStats records, computed the plain way."""

    order = 90  # after GradientStats' after_backward and after_step

    def before_fit(self):
        from convscope.callbacks.gradient_stats import parameter_layers

        self.layers = [ps for _, _, ps in parameter_layers(self.learn.model)]
        self.rows = []

    def after_backward(self):
        self.before = [[p.detach().clone() for p in ps] for ps in self.layers]
        self.grads = [torch.cat([p.grad.flatten() for p in ps]).norm() for ps in self.layers]

    def after_step(self):
        row = []
        for ps, before, grad in zip(self.layers, self.before, self.grads, strict=True):
            w = torch.cat([b.flatten() for b in before])
            moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(ps, before,
                                                                           strict=True)])
            row.append([grad, w.norm(), moved.norm() / w.norm()])
        self.rows.append(torch.tensor(row))


def test_gradient_stats_equal_the_norms_computed_directly():
    direct = Direct()
    learn = run([direct])
    want = torch.stack(direct.rows, dim=1)  # (layers, steps, 3)
    torch.testing.assert_close(learn.gradient_stats.records, want, rtol=1e-4, atol=1e-7)


def test_tiny_runs_are_not_called_healthy_and_print_no_library_warning(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a library warning would fail the run
        assert main(["train", "--subset", "5", "--epochs", "3", "--out",
                     str(tmp_path / "five")]) == 0
    out, err = capsys.readouterr()
    assert "Warning" not in err and "looks healthy" not in out
    assert "Only 3 training steps were taken: too few to judge" in out
    assert "is at chance level for 10 classes" in out
    assert main(["train", "--subset", "1438", "--bs", "5000", "--epochs", "1", "--out",
                 str(tmp_path / "one-step")]) == 0
    out, err = capsys.readouterr()
    assert "looks healthy" not in out and "Only 1 training step was taken" in out
    assert "Warning" not in err


def test_small_valid_set_is_too_little_to_judge():
    from convscope.callbacks.recorder import History

    falling = [2.0 - 0.03 * i for i in range(40)]
    hist = History(falling, falling, {"lr": [[0.01]] * 40},
                   [{"epoch": 0, "train_loss": 0.9, "valid_loss": 0.9, "accuracy": 0.9}],
                   {"n_train": 2000, "n_valid": 12, "n_classes": 10})
    found = diagnose(history=hist)
    assert [f.kind for f in found] == ["small_valid_set"]
    assert "only 12 images" in found[0].message


def test_show_batch_shows_what_the_model_is_fed(tmp_path):
    plain, augmented = tmp_path / "plain", tmp_path / "aug"
    common = ["--subset", "512", "--bs", "64", "--epochs", "1", "--no-stats"]
    assert main(["train", *common, "--out", str(plain)]) == 0
    assert main(["train", *common, "--augment", "--out", str(augmented)]) == 0
    assert (plain / "show_batch.png").read_bytes() != (augmented / "show_batch.png").read_bytes()
    assert "augmented (random crops and flips)" in (augmented / "report.html").read_text()
