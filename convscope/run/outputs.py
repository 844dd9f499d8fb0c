"""What a finished run writes besides its checkpoint: its result, files, figures and report.

`write_outputs` evaluates the trained model as the run's config says (`evaluate`), then writes
the run folder's files in run_folder.OUTPUTS order, report.html last.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from convscope import plots, run_folder
from convscope.config import TrainConfig
from convscope.diagnosis import diagnose
from convscope.files import atomic_write_bytes
from convscope.inference import model_metadata, save_model
from convscope.interpretation import Interpretation
from convscope.learner import Learner
from convscope.recipes import book_line
from convscope.report import build_report
from convscope.result import Result
from convscope.tta import UNSURE_BELOW, unsure_share


def evaluate(learn: Learner, cfg: TrainConfig, held_out: str) -> tuple[Result, torch.Tensor,
                                                                       torch.Tensor]:
    """The run's result, and the (log-)probabilities and targets it counts.

    With test-time augmentation asked for, the images the model is unsure of are looked at
    again, unless it is unsure of most of them: then augmentation only adds cost (it looks
    again at nearly every image of a model that has not learned the task), and the result is
    the plain accuracy, with a line saying why."""
    kept = getattr(learn, "valid_preds", None)
    # the last validation saw the final model: its outputs serve; else (outputs written
    # without training, a resumed finished run) a pass is made
    if kept is not None and kept.complete():
        plain, targs = kept.preds, kept.targs
    else:
        plain, targs = learn.get_preds()
    values = learn.recorder.values
    plain_acc = (values[-1]["accuracy"] if values
                 else float((plain.argmax(dim=1) == targs).float().mean()))
    meta = learn.recorder.meta
    meta["held_out"] = held_out
    meta.pop("tta", None)
    out = plain.float().log_softmax(dim=1)
    if cfg.tta:
        probs = plain.float().softmax(dim=1)
        share = unsure_share(probs)
        if share > 0.5:
            meta["tta"] = {"skipped": f"the model was unsure (top probability under "
                           f"{UNSURE_BELOW:g}) of {share:.0%} of the {held_out} images, and "
                           f"augmentation only adds cost there"}
        else:
            start = time.perf_counter()
            probs, targs = learn.tta(plain=plain, unsure_below=UNSURE_BELOW)
            meta["tta"] = {"accuracy": float((probs.argmax(dim=1) == targs).float().mean()),
                           "looked_at": round(share * len(targs)),
                           "unsure_below": UNSURE_BELOW,
                           "seconds": round(time.perf_counter() - start, 3)}
            out = probs.log()
    return Result.of(list(values) or [{"accuracy": plain_acc}], meta), out, targs


def write_metrics_csv(path: Path, values: list[dict], result: Result) -> None:
    """One row per epoch; with test-time augmentation, its accuracy (the run's result) in an
    `accuracy_tta` column of the last row, beside the plain `accuracy`."""
    rows = [dict(v) for v in values]
    if rows and result.augmented:
        for row in rows:
            row["accuracy_tta"] = ""
        rows[-1]["accuracy_tta"] = result.accuracy
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def weights_metadata(learn: Learner, cfg: TrainConfig) -> dict[str, str]:
    """What model.safetensors records beside the weights: an export's metadata (see
    inference.py: `load_learner(RUN_DIR)` and `convscope predict RUN_DIR` read it), with
    the model as --model named it and, for a user's file, that file's SHA-256."""
    from convscope.models import file_sha256

    spec = cfg.resolved().model
    meta = model_metadata(learn, spec)
    digest = file_sha256(spec)
    if digest is not None:
        meta["model_sha256"] = digest
    return meta


def write_outputs(learn: Learner, cfg: TrainConfig, run_dir: Path, held_out: str,
                  seconds: float, log) -> Result:
    """Everything a finished run writes besides its checkpoint, report.html last; logs the
    result and the diagnosis, and returns the result."""
    result, probs, targs = evaluate(learn, cfg, held_out)
    values = learn.recorder.values
    write_metrics_csv(run_dir / run_folder.METRICS, values, result)
    save_model(learn.model, run_dir / run_folder.MODEL, weights_metadata(learn, cfg))
    # the model as trained, described once here, where its code runs: the report reads this
    # and never rebuilds a model (a user's own model would mean running their file again)
    learn.recorder.meta["summary"] = learn.summary().to_dict()
    learn.recorder.history().save(run_dir / run_folder.HISTORY)
    for name, file in (("activation_stats", run_folder.ACTIVATION_STATS),
                       ("gradient_stats", run_folder.GRADIENT_STATS)):
        recorded = getattr(learn, name, None)
        if recorded is not None:
            recorded.save(run_dir / file)
    # what the result counts: the augmented probabilities where augmentation ran
    Interpretation.from_preds(probs, targs, learn.dls.classes, images=learn.dls.valid.x).save(
        run_dir / run_folder.INTERPRETATION)
    augment = getattr(learn, "batch_augment", None)
    learn.dls.show_batch(save=run_dir / run_folder.SHOW_BATCH,
                         tfm=augment.apply if augment is not None else None)
    if values:
        # every batch: a short run has few, and the diagnosis may cite the first ones
        plots.plot_loss(learn.recorder, skip_start=0, save=run_dir / run_folder.LOSS_PNG)
        plots.plot_sched(learn.recorder, save=run_dir / run_folder.SCHED_PNG)
    book = book_line(asdict(cfg))
    log(result.line(len(values), seconds)
        + (f"; {book}" if book and math.isfinite(result.accuracy) else ""))
    for finding in diagnose(learn):
        log(f"diagnosis: {finding}")
    report = build_report(run_dir)
    log(f"run folder: {run_dir} (open {report.name})")
    return result
