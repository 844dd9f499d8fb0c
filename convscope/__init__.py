"""convscope: build, train and look inside convolutional neural networks.

The system chapter 13 of the fastai book teaches, as a library: convolution from first
principles (`convscope.conv`), conv blocks and simple_cnn, in-memory DataLoaders for MNIST and
image folders, a Learner with callbacks, 1cycle training, lr_find, ActivationStats, a
diagnosis in words and an HTML report.

`convscope.conv` is the module of convolution from first principles; the conv block function
of chapter 13 is `convscope.layers.conv`.

Names are imported on first use (PEP 562), from the modules listed in `_WHERE`: importing
torch alone takes about 2 s on a small CPU, and `convscope --help` should not wait for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    "ActivationStats": "convscope.callbacks",
    "BatchAugment": "convscope.callbacks",
    "ChannelsLast": "convscope.callbacks",
    "CheckpointCallback": "convscope.callbacks",
    "DivergenceGuard": "convscope.callbacks",
    "GracefulStop": "convscope.callbacks",
    "GradientStats": "convscope.callbacks",
    "HardExamples": "convscope.callbacks",
    "Interpretation": "convscope.interpretation",
    "History": "convscope.callbacks",
    "MixedPrecision": "convscope.callbacks",
    "ParamScheduler": "convscope.callbacks",
    "ProgressCallback": "convscope.callbacks",
    "Recorder": "convscope.callbacks",
    "ValidPreds": "convscope.callbacks",
    "DataLoader": "convscope.data",
    "DataLoaders": "convscope.data",
    "ImageData": "convscope.data",
    "idx_folder": "convscope.data",
    "load_image": "convscope.data",
    "mnist": "convscope.data",
    "read_idx": "convscope.data",
    "Finding": "convscope.diagnosis",
    "diagnose": "convscope.diagnosis",
    "Distributed": "convscope.distributed",
    "TrainingDivergedError": "convscope.errors",
    "image_folder": "convscope.image_folders",
    "ScratchBatchNorm2d": "convscope.layers",
    "Flatten": "convscope.layers",
    "Callback": "convscope.callback",
    "CancelBatchException": "convscope.callback",
    "CancelEpochException": "convscope.callback",
    "CancelFitException": "convscope.callback",
    "Learner": "convscope.learner",
    "LRFindResult": "convscope.callbacks.lr_find",
    "accuracy": "convscope.metrics",
    "simple_cnn": "convscope.models",
    "SGD": "convscope.optimizers",
    "AdamW": "convscope.optimizers",
    "adamw": "convscope.optimizers",
    "sgd": "convscope.optimizers",
    "color_dim": "convscope.plots",
    "dead_chart": "convscope.plots",
    "plot_layer_stats": "convscope.plots",
    "TrainConfig": "convscope.config",
    "RECIPES": "convscope.recipes",
    "load_run": "convscope.run_folder",
    "load_learner": "convscope.inference",
    "run_training": "convscope.run",
    "build_report": "convscope.report",
    "summary": "convscope.model_summary",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'convscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what type checkers and editors see
    from convscope.callback import (
        Callback,
        CancelBatchException,
        CancelEpochException,
        CancelFitException,
    )
    from convscope.callbacks import (
        ActivationStats,
        BatchAugment,
        ChannelsLast,
        CheckpointCallback,
        DivergenceGuard,
        GracefulStop,
        GradientStats,
        HardExamples,
        History,
        MixedPrecision,
        ParamScheduler,
        ProgressCallback,
        Recorder,
        ValidPreds,
    )
    from convscope.callbacks.lr_find import LRFindResult
    from convscope.config import TrainConfig
    from convscope.data import (
        DataLoader,
        DataLoaders,
        ImageData,
        idx_folder,
        load_image,
        mnist,
        read_idx,
    )
    from convscope.diagnosis import Finding, diagnose
    from convscope.distributed import Distributed
    from convscope.errors import TrainingDivergedError
    from convscope.image_folders import image_folder
    from convscope.inference import load_learner
    from convscope.interpretation import Interpretation
    from convscope.layers import Flatten, ScratchBatchNorm2d
    from convscope.learner import Learner
    from convscope.metrics import accuracy
    from convscope.model_summary import summary
    from convscope.models import simple_cnn
    from convscope.optimizers import SGD, AdamW, adamw, sgd
    from convscope.plots import color_dim, dead_chart, plot_layer_stats
    from convscope.recipes import RECIPES
    from convscope.report import build_report
    from convscope.run import run_training
    from convscope.run_folder import load_run
