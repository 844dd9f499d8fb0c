"""ValidPreds: the outputs of the last validation pass, kept so nothing runs the valid set again.

The last epoch's validation shows the final model every valid image; what wants per-image
predictions after a fit (Interpretation, in a run's outputs) reads them here instead of making a
second pass over the valid set (bench/run_phases.py times the end of a run). The outputs
stay on the device during the pass and are joined once at its end.
"""

from __future__ import annotations

import torch
from torch import Tensor

from convscope.callback import Callback


class ValidPreds(Callback):
    """Reached as `learn.valid_preds`: `preds` (N, classes) and `targs` (N,) of the latest
    validation pass, or None before the first; a pass cut short keeps what it saw, so check
    `complete()` before trusting them to cover the valid set."""

    run_in_lr_find = False

    def __init__(self) -> None:
        self.preds: Tensor | None = None
        self.targs: Tensor | None = None
        self._preds: list[Tensor] = []
        self._targs: list[Tensor] = []

    def before_validate(self) -> None:
        self.preds = self.targs = None
        self._preds, self._targs = [], []

    def after_loss(self) -> None:
        if not self.learn.training:
            self._preds.append(self.learn.pred.detach())
            self._targs.append(self.learn.yb)

    def after_validate(self) -> None:
        if self._preds:
            self.preds, self.targs = torch.cat(self._preds), torch.cat(self._targs)
        self._preds, self._targs = [], []

    def complete(self) -> bool:
        """Whether the kept outputs cover the whole valid set (not a cut-short pass, nor one
        process's shard of it)."""
        return self.targs is not None and len(self.targs) == len(self.learn.dls.valid.y)
