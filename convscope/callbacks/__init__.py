"""Callbacks: everything the training loop does besides predict, loss, backward and step."""

from convscope.callbacks.activation_stats import ActivationStats
from convscope.callbacks.augment import BatchAugment
from convscope.callbacks.channels_last import ChannelsLast
from convscope.callbacks.checkpoint import CheckpointCallback
from convscope.callbacks.gradient_stats import GradientStats
from convscope.callbacks.guard import DivergenceGuard, TrainingDivergedError
from convscope.callbacks.hard_examples import HardExamples
from convscope.callbacks.interrupt import GracefulStop
from convscope.callbacks.mixed_precision import MixedPrecision
from convscope.callbacks.progress import ProgressCallback
from convscope.callbacks.recorder import History, Recorder
from convscope.callbacks.schedule import ParamScheduler, one_cycle, one_cycle_scheduler
from convscope.callbacks.tensorboard import TensorBoardCallback
from convscope.callbacks.valid_preds import ValidPreds

__all__ = [
    "ActivationStats", "BatchAugment", "ChannelsLast", "CheckpointCallback", "DivergenceGuard",
    "GracefulStop", "GradientStats", "HardExamples", "History", "MixedPrecision", "ParamScheduler",
    "ProgressCallback", "Recorder", "TensorBoardCallback",
    "TrainingDivergedError", "ValidPreds", "one_cycle", "one_cycle_scheduler",
]
