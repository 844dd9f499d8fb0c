import warnings

import pytest
import torch
from conftest import stripes

from convscope.callbacks import ActivationStats, MixedPrecision
from convscope.cli import main
from convscope.data import DataLoaders
from convscope.learner import Callback, Learner
from convscope.models import simple_cnn


class Dtypes(Callback):
    """Notes the dtype of the first conv's output and of the loss, per training batch."""

    def before_fit(self):
        self.conv, self.loss = [], []
        conv = self.learn.model[0][0]
        self.handle = conv.register_forward_hook(lambda m, i, o: self.conv.append(o.dtype))

    def after_loss(self):
        if self.learn.training:
            self.loss.append(self.learn.loss.dtype)

    def after_fit(self):
        self.handle.remove()


def learner(cbs, device="cpu") -> Learner:
    torch.manual_seed(0)
    dls = DataLoaders.from_data(stripes(256, 64), bs=32, device=device)
    return Learner(dls, simple_cnn(n_classes=4), cbs=cbs, progress=False)


def test_bf16_on_cpu_runs_convs_in_bf16_and_learns():
    seen, stats = Dtypes(), ActivationStats()
    learn = learner([MixedPrecision("bf16"), seen, stats])
    learn.fit(3, lr=1e-2)
    assert set(seen.conv[: 8 * 3]) == {torch.bfloat16}
    assert set(seen.loss) == {torch.float32}  # cross_entropy runs in float32 under autocast
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())
    assert learn.recorder.values[-1]["accuracy"] > 0.9
    assert all(torch.isfinite(s).all() for s in stats.stats)  # stats keep working
    # after fit, nothing of it is left on the learner
    assert "backward" not in vars(learn) and not torch.is_autocast_enabled("cpu")


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match=r"Unknown mixed precision dtype. Received: 'fp8'"):
        MixedPrecision("fp8")


class Steps(Callback):
    """Notes the loss scale before each step and whether the step changed the weights."""

    order = 60  # after MixedPrecision

    def before_fit(self):
        self.scales, self.moved = [], []

    def after_backward(self):
        self.scales.append(self.learn.grad_scaler.get_scale())
        self.before = [p.detach().clone() for p in self.learn.model.parameters()]

    def after_step(self):
        self.moved.append(any(not torch.equal(a, p) for a, p in
                              zip(self.before, self.learn.model.parameters(), strict=True)))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_fp16_scaler_skips_overflowing_steps_and_learns(device):
    """A loss scale of 2**30 overflows fp16 gradients: those steps are skipped (weights
    untouched, no divergence error) and the scale halves until steps go through."""
    seen, steps = Dtypes(), Steps()
    learn = learner([MixedPrecision("fp16", init_scale=2.0**30), seen, steps], device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn.fit(3, lr=1e-2)
    assert any("fp16 mixed precision on cpu" in str(w.message) for w in caught) == (
        device == "cpu")
    assert set(seen.conv) == {torch.float16}
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())
    skipped = steps.moved.index(True)
    assert skipped > 0 and not any(steps.moved[:skipped]) and all(steps.moved[skipped:])
    assert steps.scales[: skipped + 1] == [2.0**30 / 2**i for i in range(skipped + 1)]
    assert learn.recorder.values[-1]["accuracy"] > 0.9
    assert "grad_scaler" not in vars(learn) and "backward" not in vars(learn)


def test_cli_precision(tmp_path, capsys):
    assert main(["train", "--precision", "fp16", "--out", str(tmp_path)]) == 2
    assert "fp16 needs --device cuda" in capsys.readouterr().err
    assert main(["train", "--precision", "int4"]) == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err
