"""Callbacks: everything the training loop does besides predict, loss, backward and step."""

from convscope.callbacks.activation_stats import ActivationStats
from convscope.callbacks.channels_last import ChannelsLast
from convscope.callbacks.progress import ProgressCallback
from convscope.callbacks.recorder import History, Recorder
from convscope.callbacks.schedule import ParamScheduler, one_cycle, one_cycle_scheduler

__all__ = ["ActivationStats", "ChannelsLast", "History", "ParamScheduler", "ProgressCallback",
           "Recorder", "one_cycle", "one_cycle_scheduler"]
