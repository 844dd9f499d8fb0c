"""BatchAugment: random crops with padding and horizontal flips, on the device, per batch.

Runs on the normalised batch where it already is (CPU or GPU): no worker processes, no
per-image Python. Training batches only; validation sees the images as they are. Draws from
torch's global generator, which checkpoints save and restore, so a resumed run augments the
same way. Flips suit photos, not digits: leave `flip` off for MNIST.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from convscope.callback import Callback
from convscope.errors import UsageError


def random_crop(x: Tensor, pad: int) -> Tensor:
    """Pad (N, C, H, W) by `pad` zeros (the data mean, once normalised) on every side and cut a
    random H x W window per image."""
    if pad == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (N, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chans, rows, cols]  # (N, C, H, W)


def random_flip(x: Tensor) -> Tensor:
    """Mirror a random half of the images (N, C, H, W) left to right."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


class BatchAugment(Callback):
    """Reached as `learn.batch_augment`. `pad`: crop padding in pixels; `flip`: mirror."""

    order = -15  # before ChannelsLast (-10) converts the batch: crops index NCHW

    def __init__(self, pad: int = 2, flip: bool = True) -> None:
        if pad < 0:
            raise UsageError(f"pad must be >= 0. Received: pad={pad}.")
        self.pad, self.flip = pad, flip

    def before_batch(self) -> None:
        if not self.learn.training:
            return
        self.learn.xb = self.apply(self.learn.xb)

    def apply(self, xb):
        """The augmentation of a normalised batch (N, C, H, W): what the model is fed."""
        x = random_crop(xb, self.pad)
        return random_flip(x) if self.flip else x
