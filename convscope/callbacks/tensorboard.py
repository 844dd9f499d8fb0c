"""TensorBoardCallback: a fit's curves, histograms and images as TensorBoard event files.

The idea is fastai's TensorBoardCallback and Lightning's TensorBoardLogger: the training loop
already knows the losses, the schedule and (with ActivationStats and GradientStats) what each
layer did, so one callback hands them to `torch.utils.tensorboard.SummaryWriter`, and
`tensorboard --logdir runs` shows every run side by side, live. What it writes, with the
global step = `learn.train_iter` (the training step, which a resumed fit restores):

- every training batch: `train/loss`, `hp/lr` and `hp/mom` (param group 0);
- every epoch, at its last training step: `valid/loss` and `valid/<metric>` (the Recorder's row);
- every recorded batch, written at each epoch's end: `activations/<layer>` (a histogram, from
  ActivationStats' counts), `near_zero/<layer>`, and `grad_norm/<layer>`, `update_ratio/<layer>`
  (GradientStats), when those callbacks are attached;
- images: `data/batch` (show_batch) at the start, `color_dim/<layer>` at the end of the fit.

Resuming writes each step exactly once. At every checkpoint (the checkpoint asks each callback
for its `state_dict`) everything recorded for the steps before it is written and flushed, and a
fit that opens a log folder holding event files opens its writer with
`purge_step=learn.train_iter`: readers then drop whatever the stopped fit wrote from the
checkpoint's step on, and the resumed fit writes those steps again. So a fresh fit into a folder
with event files supersedes them (purge_step 0): one log folder per fit, as a run folder is.

Losses stay on the device until they are written (each epoch's end, a checkpoint, or every
`live_secs` so a long epoch still shows live), so logging adds no per-batch device sync.
The tensorboard package is optional (`pip install convscope[tensorboard]`): it is imported
when a fit starts, never by `import convscope`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from convscope.callback import Callback
from convscope.callbacks.schedule import get_hyper
from convscope.errors import UsageError

MISSING = "--tensorboard needs the tensorboard package: pip install convscope[tensorboard]"


def figure_pixels(fig):
    """A matplotlib figure as an (H, W, 3) uint8 array, drawn on an Agg canvas (pyplot, and
    with it a GUI backend, is never touched)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class TensorBoardCallback(Callback):
    """Reached as `learn.tensor_board`.

    Args:
        log_dir: the folder of event files (`convscope train --tensorboard`: RUN_DIR/tensorboard).
        live_secs: write the losses kept on the device at least this often during an epoch.
    """

    order = 60  # after the Recorder (50) has its epoch row; before the checkpoint (90) saves
    run_in_lr_find = False

    def __init__(self, log_dir: str | Path, live_secs: float = 20.0) -> None:
        if not live_secs > 0:
            raise UsageError(f"live_secs must be > 0. Received: live_secs={live_secs}.")
        self.log_dir, self.live_secs = Path(log_dir), live_secs
        self.writer = None
        self._active = False

    # --- opening and closing -----------------------------------------------------------------
    def _main_process(self) -> bool:
        dist = getattr(self.learn, "distributed", None)
        info = getattr(dist, "info", None)
        return info is None or info.is_main

    def before_fit(self) -> None:
        self.writer = None
        # the other processes of a distributed fit would write the same curves again
        self._active = self._main_process()
        if not self._active:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise UsageError(f"{MISSING} (importing it failed: {e})") from None
        self._SummaryWriter = SummaryWriter
        # drawn here, not when the writer opens in the first epoch: the Recorder times epochs
        self._batch_image = figure_pixels(self.learn.dls.show_batch())
        self._pending: list[tuple[int, torch.Tensor, float, float]] = []
        self._next_step: dict[str, int] = {}  # per stats callback: its first step not written
        self._last_write = time.monotonic()

    def _open(self) -> None:
        """Open the writer once the fit knows its first step: a resumed fit restores
        `learn.train_iter` after before_fit, so this waits for the first epoch."""
        step = self.learn.train_iter
        earlier = sorted(self.log_dir.glob("events.out.tfevents.*"))
        purge = None
        if earlier:
            purge = step
            _after_in_name_order(earlier)
        self.writer = self._SummaryWriter(str(self.log_dir), purge_step=purge)
        self._next_step = {"activation_stats": step, "gradient_stats": step}
        if step == 0:  # a resumed fit's folder has it already
            self.writer.add_image("data/batch", self._batch_image, 0, dataformats="HWC")
        self._batch_image = None

    def after_fit(self) -> None:
        if self.writer is None:
            return
        try:
            self._write_pending()
            self._write_color_dims()
        finally:
            self.writer.flush()
            self.writer.close()
            self.writer = None

    # --- recording -----------------------------------------------------------------------------
    def before_epoch(self) -> None:
        if self._active and self.writer is None:
            self._open()

    def after_loss(self) -> None:
        learn = self.learn
        if self.writer is None or not learn.training:
            return
        group = learn.opt.param_groups[0]
        self._pending.append((learn.train_iter, learn.loss.detach().float(),
                              float(get_hyper(group, "lr")), float(get_hyper(group, "mom"))))

    def after_batch(self) -> None:
        if (self.writer is not None and self._pending
                and time.monotonic() - self._last_write >= self.live_secs):
            self._write_losses()
            self.writer.flush()

    def after_epoch(self) -> None:
        if self.writer is None:
            return
        self._write_losses()
        learn = self.learn
        recorder = getattr(learn, "recorder", None)
        if recorder is not None and recorder.values:
            row = recorder.values[-1]
            # the epoch's last training step: the epoch-end checkpoint's position is the next
            # step, which a resume from it purges
            step = max(learn.train_iter - 1, 0)
            self.writer.add_scalar("valid/loss", row["valid_loss"], step)
            for name in recorder.metric_names:
                self.writer.add_scalar(f"valid/{name}", row[name], step)
        self._write_stats()
        self.writer.flush()

    def state_dict(self) -> None:
        """Nothing to carry: called at each checkpoint, this writes and flushes everything
        recorded so far, so the event files hold every step before the checkpoint, and a
        fit resumed from it (purge_step) writes only the steps after."""
        if self.writer is not None:
            self._write_pending()
            self.writer.flush()
        return None

    # --- writing -------------------------------------------------------------------------------
    def _write_pending(self) -> None:
        self._write_losses()
        self._write_stats()

    def _write_losses(self) -> None:
        self._last_write = time.monotonic()
        if not self._pending:
            return
        steps, losses, lrs, moms = zip(*self._pending, strict=True)
        self._pending = []
        for step, loss, lr, mom in zip(steps, torch.stack(losses).tolist(), lrs, moms,
                                       strict=True):  # one device read for all of them
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("hp/lr", lr, step)
            self.writer.add_scalar("hp/mom", mom, step)

    def _new_records(self, name: str):
        """The stats callback `name`'s state and the indices of its records not written yet
        (a resumed fit restores the records before its checkpoint: those were written)."""
        stats = getattr(self.learn, name, None)
        if stats is None or not stats.batches or stats.batches[-1] < self._next_step[name]:
            return None, []
        # its state, not its attributes: mid-epoch the records are still on the device, and
        # state_dict is what reads them (its attributes are refreshed at epoch ends only)
        state = stats.state_dict()
        first = self._next_step[name]
        new = [j for j, step in enumerate(state["batches"]) if step >= first]
        if new:
            self._next_step[name] = state["batches"][new[-1]] + 1
        return state, new

    def _write_stats(self) -> None:
        state, new = self._new_records("activation_stats")
        for i, layer in enumerate(state["layer_names"] if new else []):
            lo, hi = state["ranges"][i] or (0.0, 1.0)
            stats, hists = state["stats"][i], state["hists"][i]
            for j in new:
                step = state["batches"][j]
                mean, std, near = stats[j].tolist()
                self._add_histogram(f"activations/{layer}", hists[j], lo, hi, mean, std, step)
                self.writer.add_scalar(f"near_zero/{layer}", near, step)
        state, new = self._new_records("gradient_stats")
        for i, layer in enumerate(state["layer_names"] if new else []):
            records = state["records"][i]
            for j in new:
                grad, _, ratio = records[j].tolist()
                step = state["batches"][j]
                self.writer.add_scalar(f"grad_norm/{layer}", grad, step)
                self.writer.add_scalar(f"update_ratio/{layer}", ratio, step)

    def _add_histogram(self, tag: str, counts: torch.Tensor, lo: float, hi: float, mean: float,
                       std: float, step: int) -> None:
        """ActivationStats' fixed-range counts as TensorBoard's raw histogram: bucket k spans
        up to lo + (k+1) * width; sum and sum of squares come from the sample's mean and std,
        of which the counts are the histogram."""
        num = float(counts.sum())
        if num == 0:  # a batch whose sampled values were all NaN: nothing to draw
            return
        bins = len(counts)
        width = (hi - lo) / bins
        filled = counts.nonzero().flatten().tolist()
        self.writer.add_histogram_raw(
            tag, min=lo + filled[0] * width, max=lo + (filled[-1] + 1) * width, num=num,
            sum=mean * num, sum_squares=(std * std + mean * mean) * num,
            bucket_limits=[lo + (k + 1) * width for k in range(bins)],
            bucket_counts=counts.tolist(), global_step=step)

    def _write_color_dims(self) -> None:
        stats = getattr(self.learn, "activation_stats", None)
        if stats is None or not stats.batches or not stats.hists:
            return
        step = max(self.learn.train_iter - 1, 0)
        for i, layer in enumerate(stats.layer_names):
            self._add_figure(f"color_dim/{layer}", stats.color_dim(i), step)

    def _add_figure(self, tag: str, fig, step: int) -> None:
        self.writer.add_image(tag, figure_pixels(fig), step, dataformats="HWC")


def _after_in_name_order(earlier: list[Path]) -> None:
    """Wait until a new event file's name sorts after `earlier`'s.

    Readers take a folder's event files in name order, and the purge a resumed fit asks for
    applies to the files before its own. The name starts with the creation time in whole
    seconds, then host and process id: a fit resumed within the second its predecessor began
    could sort first. So wait for the next second (at most about one; a file dated in the
    future, from a skewed clock, is not waited for)."""
    try:
        newest = max(int(p.name.split(".")[3]) for p in earlier)
    except (IndexError, ValueError):  # a name not of the usual form: nothing to go by
        return
    wait = newest + 1 - time.time()
    if 0 < wait <= 1.5:
        time.sleep(wait)
