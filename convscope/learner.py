"""The Learner: a training loop whose every step announces an event to its callbacks.

The loop is miniai's and fastai's: fit -> epochs -> (train batches, valid batches) -> one
batch = predict, loss, backward, step. Everything else (recording, schedules, progress bars,
hooks, checkpoints) is a Callback (callback.py) that listens for the events, and is reached on the
learner by its snake_case name: `learn.recorder`, `learn.progress`. The class is the loop and
the callback list; what builds on it lives with the module that owns it and is reached from
here by a one-line method: lr_find (callbacks/lr_find.py), save and load (checkpoint.py),
summary (model_summary.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convscope import allocator
from convscope.callback import (
    EVENTS,
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    handles,
)
from convscope.data import DataLoader, DataLoaders
from convscope.errors import UsageError
from convscope.metrics import accuracy, metric_name
from convscope.models import eval_mode
from convscope.optimizers import adamw
from convscope.tta import tta

__all__ = ["EVENTS", "Callback", "CancelBatchException", "CancelEpochException",
           "CancelFitException", "Learner", "accuracy"]


class Learner:
    """Holds the data, model, loss, optimizer and callbacks, and trains with `fit`.

    Args:
        dls: train and valid DataLoaders.
        model: any nn.Module mapping a batch x to predictions; moved to the data's device.
        loss_func: (pred, y) -> scalar loss.
        opt_func: (params, lr) -> optimizer; `adamw` by default.
        lr: learning rate used when `fit` is given none.
        metrics: functions (pred, y) -> batch mean, computed on the valid set every epoch.
        cbs: callbacks added to the defaults: a Recorder, a DivergenceGuard (stops training
            when the loss or a gradient is NaN or infinite) and a progress display.

    >>> from convscope.models import simple_cnn
    >>> from convscope.data import mnist
    >>> dls = DataLoaders.from_data(mnist().subset(1000, 500), bs=64)
    >>> learn = Learner(dls, simple_cnn(), cbs=[], progress=False)
    >>> learn.fit(1, lr=1e-2)
    >>> learn.recorder.values[-1]["accuracy"] > 0.5
    True
    """

    def __init__(self, dls: DataLoaders, model: nn.Module,
                 loss_func: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                 opt_func: Callable[..., torch.optim.Optimizer] = adamw, lr: float = 1e-3,
                 metrics: Sequence[Callable[[Tensor, Tensor], Tensor]] = (accuracy,),
                 cbs: Iterable[Callback] = (), progress: bool = True) -> None:
        from convscope.callbacks.guard import DivergenceGuard
        from convscope.callbacks.progress import ProgressCallback
        from convscope.callbacks.recorder import Recorder

        self.dls, self.model, self.loss_func = dls, model.to(dls.device), loss_func
        self.opt_func, self.lr, self.metrics = opt_func, lr, list(metrics)
        self.opt: torch.optim.Optimizer | None = None
        self.cbs: list[Callback] = []
        self._handlers: dict[str, list[Callable[[], None]]] = {e: [] for e in EVENTS}
        self.epoch = self.n_epoch = self.iter = self.n_iter = 0
        self.train_iter = 0
        self._total_iters: int | None = None
        self.training = False
        self._resume: str | Path | None = None
        self._start_batch = 0
        defaults: list[Callback] = [Recorder(), DivergenceGuard()]
        defaults += [ProgressCallback()] if progress else []
        for cb in (*defaults, *cbs):
            self.add_cb(cb)

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        opt = getattr(self.opt_func, "__name__", type(self.opt_func).__name__)
        loss = getattr(self.loss_func, "__name__", type(self.loss_func).__name__)
        trained = (f"trained {len(self.recorder.values)} epochs"
                   if getattr(self, "recorder", None) is not None and self.recorder.values
                   else "not trained yet")
        return (f"Learner: {type(self.model).__name__} ({params:,} parameters) on "
                f"{self.dls.device}, {trained}\n  data: {self.dls!r}\n  loss: {loss}, "
                f"optimizer: {opt} (lr {self.lr:g}), metrics: "
                f"{', '.join(metric_name(m) for m in self.metrics) or 'none'}\n  callbacks: "
                f"{', '.join(c.name for c in sorted(self.cbs, key=lambda c: c.order))}")

    def _repr_html_(self) -> str:
        import html

        lines = repr(self).splitlines()
        items = "".join(f"<li>{html.escape(line.strip())}</li>" for line in lines[1:])
        return f"<p><b>{html.escape(lines[0])}</b></p><ul>{items}</ul>"

    # --- epoch lengths ---------------------------------------------------------------------
    def epoch_images(self, epoch: int) -> int:
        """How many training images epoch `epoch` draws: every image, unless a callback that
        shortens epochs (one with an `epoch_images(epoch)` method) says fewer; the fewest
        any callback says."""
        said = [n for cb in self.cbs if callable(getattr(cb, "epoch_images", None))
                if (n := cb.epoch_images(epoch)) is not None]
        return min([len(self.dls.train.y), *said])

    def epoch_length(self, epoch: int) -> int:
        """This process's training batches in epoch `epoch`, as the loader stands (a shard
        of the batches under several processes) and the callbacks shorten it."""
        return self.dls.train.n_batches(self.epoch_images(epoch))

    @property
    def total_iters(self) -> int:
        """The training batches of the whole fit: what schedules span. Computed from the
        epoch lengths, so no callback sets it and the order in which callbacks shard or
        shorten epochs does not matter; fixed once every before_fit has run (the schedule
        reads it on every batch)."""
        if self._total_iters is not None:
            return self._total_iters
        return sum(self.epoch_length(e) for e in range(self.n_epoch))

    @total_iters.setter
    def total_iters(self, value: int | None) -> None:
        """A fixed total for a fit that is not epochs of the training set (lr_find's sweep);
        None: computed from the epoch lengths again."""
        self._total_iters = value

    # --- callbacks -------------------------------------------------------------------------
    def add_cb(self, cb: Callback) -> Learner:
        """Attach a callback and expose it as `self.<cb.name>`, replacing any callback of
        that name."""
        self._attach(cb)
        return self

    def _attach(self, cb: Callback) -> Callback | None:
        """Attach `cb`; return the callback of the same name it displaced, if any."""
        if not isinstance(cb, Callback):
            raise TypeError(f"Expected a Callback instance. Received: {cb!r}. "
                            f"Did you pass the class instead of `{cb!r}()`?")
        existing = getattr(self, cb.name, None)
        if existing is not None and not isinstance(existing, Callback):
            raise UsageError(f"Callback name {cb.name!r} clashes with the learner attribute of "
                             f"that name. Rename the callback class.")
        displaced = existing if existing in self.cbs else None
        if displaced is not None:
            self.remove_cb(displaced)
        cb.learn = self
        self.cbs.append(cb)
        setattr(self, cb.name, cb)
        self._index_handlers()
        return displaced

    def remove_cb(self, cb: Callback | str) -> Learner:
        """Detach a callback, given itself or its name."""
        if isinstance(cb, str):
            found = [c for c in self.cbs if c.name == cb]
            if not found:
                raise UsageError(f"No callback named {cb!r}. Attached: "
                                 f"{[c.name for c in self.cbs]}.")
            cb = found[0]
        if cb not in self.cbs:
            raise UsageError(f"{type(cb).__name__} is not attached to this learner. Attached: "
                             f"{[c.name for c in self.cbs]}.")
        self.cbs.remove(cb)
        if getattr(self, cb.name, None) is cb:
            delattr(self, cb.name)
        self._index_handlers()
        return self

    def callback(self, event: str) -> None:
        """Call `event` on every callback that handles it, in `order`."""
        for handler in self._handlers[event]:
            handler()

    def _index_handlers(self) -> None:
        """Per event, the callbacks' own methods for it, in order: the loop then calls only
        these, not the dozen no-ops of every callback on every batch."""
        ordered = sorted(self.cbs, key=lambda c: c.order)
        self._handlers = {event: [getattr(cb, event) for cb in ordered if handles(cb, event)]
                          for event in EVENTS}

    # --- the loop --------------------------------------------------------------------------
    def _with_events(self, f: Callable[[], None], name: str,
                     cancel: type[Exception] | None = None) -> None:
        try:
            self.callback(f"before_{name}")
            f()
        except BaseException as e:
            if cancel is not None and isinstance(e, cancel):
                pass
            else:
                if name == "fit":  # so callbacks release hooks and files even after an error
                    self.callback("after_fit")
                raise
        self.callback(f"after_{name}")

    def fit(self, n_epoch: int, lr: float | None = None, cbs: Iterable[Callback] = (),
            reset_opt: bool = False, resume: str | Path | None = None) -> None:
        """Train for `n_epoch` epochs, validating after each.

        Args:
            n_epoch: number of passes over the training set.
            lr: learning rate (default: the learner's `lr`); schedules may change it per batch.
            cbs: callbacks for this fit only; one that shares a name with an attached
                callback stands in for it during this fit, which gets it back afterwards.
            reset_opt: start a fresh optimizer (its state is kept across fits otherwise).
            resume: a checkpoint written during a fit with the same n_epoch and callbacks:
                continue from it (weights, optimizer, schedule position, RNG states, data
                order and recorder history), as if training had never stopped.
        """
        if n_epoch < 0:
            raise UsageError(f"n_epoch must be >= 0. Received: n_epoch={n_epoch}.")
        lr = self.lr if lr is None else lr
        if not lr > 0:
            raise UsageError(f"Learning rate must be > 0. Received: lr={lr}.")
        cbs = list(cbs)
        displaced = [self._attach(cb) for cb in cbs]
        try:
            if self.opt is None or reset_opt:
                self.opt = self.opt_func(self.model.parameters(), lr=lr)
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.n_epoch = n_epoch
            self.train_iter, self._total_iters = 0, None
            self._resume = resume
            with allocator.kept_memory():
                self._with_events(self._do_fit, "fit", CancelFitException)
        finally:
            for cb, old in zip(reversed(cbs), reversed(displaced), strict=True):
                if cb in self.cbs:
                    self.remove_cb(cb)
                if old is not None:
                    self._attach(old)

    def _do_fit(self) -> None:
        if self._total_iters is None:  # every callback has sharded or shortened its epochs
            self._total_iters = self.total_iters
        start_epoch, self._start_batch = 0, 0
        if self._resume is not None:  # after before_fit, so callbacks' fresh state is replaced
            from convscope.checkpoint import load_checkpoint

            pos = load_checkpoint(self, self._resume, resuming=True)
            if pos.n_epoch != self.n_epoch:
                raise UsageError(f"The checkpoint {str(self._resume)!r} is from a fit of "
                                 f"{pos.n_epoch} epochs; resume it with n_epoch={pos.n_epoch}"
                                 f" (received {self.n_epoch}) so the schedule matches.")
            start_epoch, self._start_batch, self.train_iter = pos.epoch, pos.batch, pos.train_iter
        for epoch in range(start_epoch, self.n_epoch):
            self.epoch = epoch
            self._with_events(self._do_epoch, "epoch", CancelEpochException)

    def _do_epoch(self) -> None:
        self.training = True
        self.model.train()
        self.dl = self.dls.train
        self._with_events(self._all_batches, "train")
        self.training = False
        self.model.eval()
        self.dl = self.dls.valid
        with torch.inference_mode():
            self._with_events(self._all_batches, "validate")

    def _all_batches(self) -> None:
        self.n_iter = len(self.dl)
        start = self._start_batch if self.training else 0
        self._start_batch = 0  # only the first resumed epoch starts late
        for i, (xb, yb) in enumerate(self.dl.batches(start), start=start):
            self.iter, self.xb, self.yb = i, xb, yb
            self._with_events(self._do_one_batch, "batch", CancelBatchException)
            if self.training:
                self.train_iter += 1

    def _do_one_batch(self) -> None:
        self.pred = self.model(self.xb)
        self.callback("after_pred")
        self.loss = self.loss_func(self.pred, self.yb)
        self.callback("after_loss")
        if not self.training:
            return
        self.backward()
        self.callback("after_backward")
        self.step()
        self.callback("after_step")
        self.opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]

    # A callback may replace these two on its learner for a fit (MixedPrecision's grad scaler
    # does): they are the only places where gradients are made and applied.
    def backward(self) -> None:
        """Compute gradients of `self.loss`."""
        self.loss.backward()

    def step(self) -> None:
        """Apply the gradients with the optimizer."""
        self.opt.step()  # type: ignore[union-attr]

    # --- conveniences ----------------------------------------------------------------------
    def fit_one_cycle(self, n_epoch: int, lr_max: float | None = None, div: float = 25.0,
                      div_final: float = 1e5, pct_start: float = 0.25,
                      moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
                      cbs: Iterable[Callback] = (), resume: str | Path | None = None) -> None:
        """Train with the 1cycle policy: lr warms up from lr_max/div to lr_max over the first
        `pct_start` of the steps (cosine), then anneals to lr_max/div_final; momentum (Adam's
        beta1) moves the opposite way, moms[0] -> moms[1] -> moms[2].
        """
        from convscope.callbacks.schedule import one_cycle_scheduler

        lr_max = self.lr if lr_max is None else lr_max
        sched = one_cycle_scheduler(lr_max, div, div_final, pct_start, moms)
        self.fit(n_epoch, lr=lr_max / div, cbs=[sched, *cbs], resume=resume)

    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
                stop_div: float = 4.0):
        """Sweep the learning rate and suggest one; see `convscope.callbacks.lr_find.lr_find`.

        Returns:
            an LRFindResult: `valley`, `steep`, `minimum`, the curve (`lrs`, `losses`), and
            `plot()`. Leaves no trace on the learner.
        """
        from convscope.callbacks.lr_find import lr_find

        return lr_find(self, start_lr, end_lr, num_it, stop_div)

    def save(self, path: str | Path) -> Path:
        """Write weights, optimizer state, RNG states and every callback's state to one
        safetensors file (atomically); see `convscope.checkpoint.save_learner`."""
        from convscope.checkpoint import save_learner

        return save_learner(self, path)

    def load(self, path: str | Path) -> Learner:
        """Restore what `save` wrote. A checkpoint for another architecture raises a
        ValueError listing the keys and shapes that differ."""
        from convscope.checkpoint import load_checkpoint

        load_checkpoint(self, path)
        return self

    @torch.inference_mode()
    def get_preds(self, dl: DataLoader | None = None) -> tuple[Tensor, Tensor]:
        """Predictions and targets over a whole loader (the valid set by default)."""
        dl = self.dls.valid if dl is None else dl
        with eval_mode(self.model):
            preds, targs = zip(*[(self.model(xb), yb) for xb, yb in dl], strict=True)
        return torch.cat(preds), torch.cat(targs)

    def tta(self, dl: DataLoader | None = None, shift: int = 1, plain: Tensor | None = None,
            unsure_below: float | None = None) -> tuple[Tensor, Tensor]:
        """Test-time augmentation: probabilities averaged over each image of `dl` (the valid
        set by default) and its four shifts by `shift` pixels, and the targets; `plain`: the
        outputs on `dl` as it is, when at hand; `unsure_below`: only the images whose top
        probability is under it. See convscope.tta."""
        return tta(self, dl, shift=shift, plain=plain, unsure_below=unsure_below)

    def validate(self, dl: DataLoader | None = None) -> dict[str, float]:
        """Loss and metrics over a whole loader (the valid set by default)."""
        pred, targ = self.get_preds(dl)
        out = {"valid_loss": float(self.loss_func(pred, targ))}
        for m in self.metrics:
            out[metric_name(m)] = float(m(pred, targ))
        return out

    def predict(self, item):
        """The class of one image (a file, a PIL image, a uint8 array or tensor, any size or
        mode), fed as training was: a Prediction (label, index, probs). See inference.py."""
        from convscope.inference import predict

        return predict(self, item)

    def show_results(self, n: int = 9, save: str | Path | None = None):
        """The first n valid images, titled target/prediction, the wrong ones in red."""
        from convscope.inference import show_results

        return show_results(self, n, save)

    def export(self, path: str | Path) -> Path:
        """One safetensors file (weights and what feeding the model needs) for load_learner."""
        from convscope.inference import export

        return export(self, path)

    def summary(self):
        """Per layer: output shape, parameters, MACs and receptive field, for this data."""
        from convscope.model_summary import summary

        return summary(self.model, tuple(self.dls.train.x.shape[1:]))

