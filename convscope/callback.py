"""Callback: the base class of everything the training loop does besides its four steps.

The Learner (learner.py) runs fit -> epochs -> batches and announces an event at each point
(`EVENTS`, in the order they happen); a Callback overrides the events it needs. Both the
learner and every callback import this module, and this module imports neither, so the loop
and its callbacks depend on one small thing rather than on each other.

A callback that holds state a resumed fit needs (a Recorder's history, ActivationStats'
records, a grad scaler's loss scale) says so with `state_dict` / `load_state_dict`; the
checkpoint saves and restores it for every callback attached, by name.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convscope.learner import Learner

EVENTS = (
    "before_fit", "before_epoch", "before_train", "before_batch", "after_pred", "after_loss",
    "after_backward", "after_step", "after_batch", "after_train", "before_validate",
    "after_validate", "after_epoch", "after_fit",
)


class CancelFitException(Exception):
    """Raise in a callback to stop training; after_fit still runs."""


class CancelEpochException(Exception):
    """Raise in a callback to skip the rest of this epoch; after_epoch still runs."""


class CancelBatchException(Exception):
    """Raise in a callback to skip the rest of this batch; after_batch still runs."""


def snake_name(name: str) -> str:
    """A class name as the learner's attribute: `ActivationStats` -> `activation_stats`,
    `CheckpointCallback` -> `checkpoint`.

    >>> snake_name("CheckpointCallback"), snake_name("LRFinder")
    ('checkpoint', 'lr_finder')
    """
    name = re.sub(r"Callback$", "", name) or name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class Callback:
    """Base class: override the events you need. Lower `order` runs first."""

    order = 0
    run_in_lr_find = True  # False for callbacks that observe a fit: they sit out lr_find
    learn: Learner

    @property
    def name(self) -> str:
        """The attribute the learner exposes this callback as: Recorder -> `recorder`."""
        return snake_name(type(self).__name__)

    # --- state a checkpoint carries ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        """What a resumed fit needs of this callback, or None when it holds nothing.

        Values are tensors or JSON-able (numbers, strings, lists, dicts, None); a checkpoint
        stores the tensors as tensors and the rest as JSON. Called at a checkpoint, during a
        fit (after a training batch or an epoch)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned. When resuming, it is called after every
        callback's `before_fit`, so it replaces the fresh state before_fit set up."""

    # --- events ---------------------------------------------------------------------------
    def before_fit(self) -> None:
        """Once, before the first epoch: set up state, hooks, timers."""

    def before_epoch(self) -> None:
        """At the start of each epoch, before its training batches."""

    def before_train(self) -> None:
        """After the model is put in train mode, before the first training batch."""

    def before_batch(self) -> None:
        """Before the forward pass; `learn.xb`, `learn.yb` hold the batch (may be replaced)."""

    def after_pred(self) -> None:
        """After the forward pass; `learn.pred` holds the output."""

    def after_loss(self) -> None:
        """After the loss is computed; `learn.loss` holds it (train and valid)."""

    def after_backward(self) -> None:
        """After gradients are computed, before the optimizer step (training only)."""

    def after_step(self) -> None:
        """After the optimizer step, before gradients are zeroed (training only)."""

    def after_batch(self) -> None:
        """At the end of each batch, train or valid, also when it was cancelled."""

    def after_train(self) -> None:
        """After the last training batch of the epoch."""

    def before_validate(self) -> None:
        """After the model is put in eval mode, before the first valid batch."""

    def after_validate(self) -> None:
        """After the last valid batch of the epoch."""

    def after_epoch(self) -> None:
        """At the end of each epoch, after validation."""

    def after_fit(self) -> None:
        """When fit ends: normally, cancelled, or by an error (release hooks and files here)."""


def handles(cb: Callback, event: str) -> bool:
    """Whether `cb` does anything on `event` (overrides it, on its class or itself)."""
    return event in vars(cb) or getattr(type(cb), event) is not getattr(Callback, event)


__all__ = ["EVENTS", "Callback", "CancelBatchException", "CancelEpochException",
           "CancelFitException", "handles", "snake_name"]
