"""DivergenceGuard: stop training the moment the loss or a gradient is NaN or infinite.

On by default in every Learner. The check runs after the backward pass and before the
optimizer step, so the bad batch changes no weight, and no checkpoint is written after it:
the last checkpoint written, if any, stays the last one. It costs one read of the device per batch.
"""

from __future__ import annotations

import math

import torch

from convscope.callback import Callback
from convscope.errors import TrainingDivergedError

__all__ = ["DivergenceGuard", "TrainingDivergedError"]

# A loss below this is one a model trains from (cross-entropy at chance for 10 classes is 2.3):
# a gradient that overflows beside it comes from the arithmetic, not from the learning rate.
SMALL_LOSS = 20.0


class DivergenceGuard(Callback):
    """Reached as `learn.divergence_guard`; remove it to let a NaN run go on."""

    order = -20
    run_in_lr_find = False

    def before_fit(self) -> None:
        self._model = None

    def after_backward(self) -> None:
        learn = self.learn
        if self._model is not learn.model:  # (re)listed when the model changes: walking the
            # module tree every batch cost 0.2 ms a batch
            self._model, self._params = learn.model, list(learn.model.parameters())
        grads = [p.grad for p in self._params if p.grad is not None]
        loss = learn.loss.detach()
        grad_norm = (torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
                     if grads else torch.zeros((), device=loss.device))
        # one device read for both checks
        finite_loss, finite_grad = torch.stack([loss.isfinite(), grad_norm.isfinite()]).tolist()
        if getattr(learn, "grad_scaler", None) is not None:
            finite_grad = True  # fp16: overflowing gradients are the scaler's to skip
        if finite_loss and finite_grad:
            return
        lr = learn.opt.param_groups[0]["lr"]
        what = (f"the loss became {float(loss)}" if not finite_loss
                else f"a gradient became {float(grad_norm)} (loss {float(loss):.4g})")
        # the highest rate the fit reached is the one to lower (a schedule may be past it)
        recorder = getattr(learn, "recorder", None)
        seen = [g[0] for g in recorder.hps.get("lr", [])] if recorder is not None else []
        peak = max([lr, *[x for x in seen if math.isfinite(x)]])
        lower = f"{peak / 10:.3g}" if math.isfinite(peak) else "a lower value"
        checkpoint = getattr(learn, "checkpoint", None)
        saved = checkpoint is not None and checkpoint.path.is_file()
        kept = (f"the last checkpoint ({checkpoint.path}) is kept" if saved
                else "no checkpoint had been written yet")
        where = (f"Training diverged at epoch {learn.epoch}, batch {learn.iter} (step "
                 f"{learn.train_iter}): {what} with learning rate {lr:.3g}. The batch was not "
                 f"applied; {kept}.")
        mixed = getattr(learn, "mixed_precision", None)
        if finite_loss and float(loss) < SMALL_LOSS and mixed is not None:
            advice = (f" A gradient overflowing while the loss is small points to a numeric "
                      f"fault of {mixed.dtype} mixed precision, not to a learning rate too "
                      f"high: train in fp32 (--precision fp32, or without MixedPrecision).")
        else:
            advice = (f" Try a lower learning rate (e.g. {lower}), a warmup (fit_one_cycle), "
                      f"or batchnorm.")
        raise TrainingDivergedError(where + advice, learn.epoch, learn.iter, lr)
