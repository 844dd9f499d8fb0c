"""The Learner a run's config asks for: simple_cnn, AdamW, and the callbacks its options name."""

from __future__ import annotations

import torch

from convscope.callbacks import (
    ActivationStats,
    BatchAugment,
    ChannelsLast,
    GradientStats,
    HardExamples,
    MixedPrecision,
)
from convscope.config import TrainConfig, parse_widths, resolve_device
from convscope.data import DataLoaders, ImageData
from convscope.learner import Learner
from convscope.models import build_model

# The statistics callbacks record one training batch per this many images (every batch from
# batch size 512 up): their cost is per recorded batch, so recording every small batch would
# cost a visible share of an epoch (bench/callback_cost.py), for curves no sharper to the eye.
STATS_IMAGES = 512


def stats_every(bs: int) -> int:
    """The statistics callbacks record one batch in this many: one per STATS_IMAGES images."""
    return max(1, STATS_IMAGES // bs)


def make_learner(data: ImageData, cfg: TrainConfig, progress: bool = True,
                 stats: bool | None = None) -> Learner:
    """The model cfg.model names (simple_cnn by default), AdamW, and the callbacks the config's
    options name; `stats` overrides cfg.stats (processes other than the first record none)."""
    dls = DataLoaders.from_data(data, bs=cfg.bs, seed=cfg.seed, device=resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, dls.in_channels, dls.c, widths=parse_widths(cfg.widths),
                        first_ks=cfg.first_ks, bn=cfg.bn)
    cbs = [ChannelsLast()] if cfg.channels_last else []
    if cfg.hard < 1:
        cbs.append(HardExamples(cfg.hard))
    if cfg.augment:
        cbs.append(BatchAugment(pad=max(1, dls.train.x.shape[-1] // 14)))
    if cfg.precision != "fp32":
        cbs.append(MixedPrecision(cfg.precision))
    if cfg.stats if stats is None else stats:
        every = stats_every(cfg.bs)
        cbs += [ActivationStats(seed=cfg.seed, every=every), GradientStats(every=every)]
    return Learner(dls, model, lr=cfg.lr, cbs=cbs, progress=progress)
