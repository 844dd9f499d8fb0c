"""convscope: build, train and look inside convolutional neural networks.

The system chapter 13 of the fastai book teaches, as a library: conv blocks and simple_cnn,
in-memory MNIST DataLoaders, a Learner with callbacks, 1cycle training and a Recorder.

`convscope.conv` is the module of convolution from first principles; the conv block function
of chapter 13 is `convscope.layers.conv`.
"""

from convscope.callbacks import (
    ActivationStats,
    ChannelsLast,
    CheckpointCallback,
    DivergenceGuard,
    History,
    ParamScheduler,
    ProgressCallback,
    Recorder,
)
from convscope.data import DataLoader, DataLoaders, ImageData, idx_folder, mnist, read_idx
from convscope.diagnose import Finding, diagnose
from convscope.errors import TrainingDivergedError
from convscope.layers import BatchNorm2d, Flatten
from convscope.learner import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    Learner,
    accuracy,
    adamw,
    sgd,
)
from convscope.models import simple_cnn
from convscope.plots import color_dim, dead_chart, plot_layer_stats
from convscope.recipe import TrainConfig, run_training
from convscope.report import build_report
from convscope.summary import summary

__all__ = [
    "ActivationStats", "CheckpointCallback", "DivergenceGuard", "TrainingDivergedError",
    "Finding", "History", "build_report", "color_dim", "dead_chart",
    "diagnose", "plot_layer_stats", "summary",
    "CancelBatchException", "CancelEpochException", "CancelFitException", "Callback",
    "BatchNorm2d", "ChannelsLast", "DataLoader", "DataLoaders", "Flatten", "ImageData", "Learner",
    "ParamScheduler", "ProgressCallback", "Recorder", "TrainConfig", "accuracy", "adamw",
    "idx_folder", "mnist", "read_idx", "run_training", "sgd", "simple_cnn",
]
__version__ = "0.1.0"
