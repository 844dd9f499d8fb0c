"""HardExamples: after the first epoch, train only on the images the model finds hardest.

By the end of one epoch a small CNN gets most MNIST digits right with room to spare, and the
next pass over them teaches it little. This callback keeps each training image's loss from
the last time a batch held it (cross-entropy of the model's output then: no extra forward
pass) and makes every epoch after the first draw only the `fraction` of the training images
with the highest such loss, shuffled. The first epoch sees every image; an image no epoch has
shown yet counts as the hardest. The learning-rate schedule spans the shorter epochs, so a
1cycle fit still ends where it should.

On MNIST with simple_cnn, the `fast` recipe (recipes.py) trains its second and third epochs
on the hardest quarter of the digits: 1.5 epochs' worth of images where three full epochs
reach the same accuracy (bench/time_to_99.py). The idea is old: online hard example mining,
selective backprop.

The Learner asks every callback how many images each epoch draws (`epoch_images`), so the
learning-rate schedule spans the shorter epochs; the Recorder sees the training set change
and marks it, so plots and the diagnosis know where without knowing why.

Under DistributedDataParallel every process records the losses of the whole global batch (one
all_gather of the batch's image positions and losses per step), so every process chooses the
same images, and a checkpoint written by rank 0 holds everything a resume needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from convscope.callback import Callback
from convscope.errors import UsageError


class HardExamples(Callback):
    """Reached as `learn.hard_examples`.

    Args:
        fraction: the share of the training images each epoch after the first trains on
            (0 < fraction <= 1; 1 changes nothing).

    Attributes:
        losses: per training image, its loss when a batch last held it (inf: not yet seen).
        chosen: the positions of the images the current epoch draws from (None: all).
    """

    run_in_lr_find = False

    def __init__(self, fraction: float = 0.4) -> None:
        if not 0 < fraction <= 1:
            raise UsageError(f"HardExamples: fraction must be in (0, 1]. Received: "
                             f"fraction={fraction}.")
        self.fraction = fraction
        self.losses: Tensor | None = None
        self.chosen: Tensor | None = None
        self._chosen_epoch = -1

    @property
    def n_hard(self) -> int:
        """How many images each epoch after the first draws."""
        return math.ceil(self.fraction * len(self.learn.dls.train.y))

    def before_fit(self) -> None:
        dl = self.learn.dls.train
        self.losses = torch.full((len(dl.y),), math.inf, device=dl.device)
        self.chosen, self._chosen_epoch = None, -1
        dl.restrict(None)

    def epoch_images(self, epoch: int) -> int | None:
        """The Learner's question: how many images epoch `epoch` draws (None: all)."""
        return None if epoch == 0 else self.n_hard

    def describe(self) -> str:
        """What this callback did to training, for the report."""
        return (f"epochs after the first train on the {self.fraction:.0%} of the training "
                f"images with the highest loss when last seen ({self.n_hard:,} images)")

    def before_epoch(self) -> None:
        if self.learn.epoch == 0:
            self.chosen, self._chosen_epoch = None, 0
        elif self._chosen_epoch != self.learn.epoch:  # a resumed epoch keeps its choice
            # a stable sort breaks ties by position, so every process and machine agrees
            order = torch.sort(self.losses, descending=True, stable=True).indices
            self.chosen = order[:self.n_hard].sort().values.cpu()
            self._chosen_epoch = self.learn.epoch
        self.learn.dls.train.restrict(self.chosen)

    def after_loss(self) -> None:
        learn = self.learn
        if not learn.training:
            return
        with torch.no_grad():
            loss = F.cross_entropy(learn.pred.detach().float(), learn.yb, reduction="none")
            idx = learn.dl.batch_indices
            if getattr(learn, "distributed", None) is not None:
                idx, loss = self._gather(idx, loss)
            self.losses[idx] = loss

    def _gather(self, idx: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
        """The image positions and losses of every process's batch (padded to a common length:
        the last batch of an epoch may be short on some processes)."""
        import torch.distributed as dist

        size = self.learn.dls.train.bs
        mine = torch.full((2, size), -1.0, dtype=torch.float64, device=loss.device)
        mine[0, :len(idx)], mine[1, :len(loss)] = idx.double(), loss.double()
        every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(every, mine)
        both = torch.cat(every, dim=1)
        keep = both[0] >= 0
        return both[0, keep].long(), both[1, keep].float()

    def after_fit(self) -> None:
        self.learn.dls.train.restrict(None)

    def state_dict(self) -> dict:
        chosen = self.chosen if self.chosen is not None else torch.empty(0, dtype=torch.long)
        return {"losses": self.losses, "chosen": chosen, "chosen_epoch": self._chosen_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.losses = state["losses"].to(self.learn.dls.train.device)
        self.chosen = state["chosen"].long() if len(state["chosen"]) else None
        self._chosen_epoch = int(state["chosen_epoch"])
