"""Interpretation: what the model gets wrong, per class and per image.

fastai's ClassificationInterpretation, computed in one pass over the valid set on the model's
device: the confusion matrix, the most confused pairs, the images with the largest losses
(predicted, actual, probability) and the accuracy of each class. The data is kept apart from
drawing (plots.py) and is saved with a run (interpretation.safetensors) so the report shows it.

>>> import torch
>>> it = Interpretation(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]),
...                     torch.tensor([0.9, 0.8, 0.6, 0.7]), torch.tensor([0.1, 0.2, 0.9, 0.4]),
...                     ["a", "b", "c"])
>>> it.confusion_matrix().tolist()          # rows: actual, columns: predicted
[[1, 0, 0], [0, 1, 0], [0, 1, 1]]
>>> it.most_confused()
[('c', 'b', 1)]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from convscope.errors import UsageError

FORMAT = "convscope.interpretation/1"


@dataclass
class Interpretation:
    """Per valid image: the predicted class, the actual class, the probability of the
    prediction and the loss; `images` (uint8, N x C x H x W) when known, for top_losses."""

    preds: Tensor
    targs: Tensor
    probs: Tensor
    losses: Tensor
    classes: list[str]
    images: Tensor | None = field(default=None, repr=False)

    @classmethod
    def from_learner(cls, learn, dl=None) -> Interpretation:
        """One pass over `dl` (the valid set by default) with the model in eval mode, on its
        device (`learn.get_preds`); one copy to the CPU at the end."""
        dl = learn.dls.valid if dl is None else dl
        outs, targs = learn.get_preds(dl)
        return cls.from_preds(outs, targs, list(learn.dls.classes), images=dl.x)

    @classmethod
    @torch.inference_mode()
    def from_preds(cls, outs: Tensor, targs: Tensor, classes: list[str],
                   images: Tensor | None = None) -> Interpretation:
        """From a model's outputs (N, classes) and the targets (N,) of the same images, e.g.
        those a ValidPreds callback kept from the last validation pass."""
        if outs.ndim != 2 or len(outs) != len(targs):
            raise UsageError(f"Expected outputs (N, classes) and targets (N,). Received: "
                             f"{tuple(outs.shape)} and {tuple(targs.shape)}.")
        out = outs.float()
        conf, pred = out.softmax(dim=1).max(dim=1)
        losses = F.cross_entropy(out, targs, reduction="none")
        return cls(*(t.cpu() for t in (pred, targs, conf, losses)), classes=list(classes),
                   images=None if images is None else images.cpu())

    def __len__(self) -> int:
        return len(self.targs)

    def confusion_matrix(self) -> Tensor:
        """(classes, classes) counts: row = actual class, column = predicted class."""
        c = len(self.classes)
        return torch.bincount(self.targs * c + self.preds, minlength=c * c).view(c, c)

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """(actual, predicted, count) of the off-diagonal cells with at least `min_val`
        images, the largest first."""
        cm = self.confusion_matrix().clone()
        cm.fill_diagonal_(0)
        pairs = [(self.classes[a], self.classes[p], int(cm[a, p]))
                 for a, p in (cm >= max(min_val, 1)).nonzero().tolist()]
        return sorted(pairs, key=lambda t: (-t[2], t[0], t[1]))

    def top_losses(self, k: int = 9) -> list[dict]:
        """The `k` images with the largest loss: index, actual, predicted, probability of the
        prediction, loss."""
        k = min(k, len(self))
        loss, idx = self.losses.topk(k)
        return [{"index": int(i), "actual": self.classes[int(self.targs[i])],
                 "predicted": self.classes[int(self.preds[i])],
                 "probability": float(self.probs[i]), "loss": float(v)}
                for v, i in zip(loss, idx, strict=True)]

    def accuracy(self) -> float:
        """The share of images predicted right."""
        return float((self.preds == self.targs).float().mean()) if len(self) else float("nan")

    def per_class_accuracy(self) -> list[dict]:
        """Per class: how many valid images, and the share predicted right."""
        cm = self.confusion_matrix()
        n = cm.sum(dim=1)
        return [{"class": name, "images": int(n[i]),
                 "accuracy": float(cm[i, i] / n[i]) if n[i] else float("nan")}
                for i, name in enumerate(self.classes)]

    def plot_confusion_matrix(self, save: str | Path | None = None, held_out: str = "valid"):
        """The confusion matrix with its counts; returns the figure. `held_out`: what the
        images are ("valid" or "test"), for its title."""
        from convscope import plots

        return plots.plot_confusion_matrix(self.confusion_matrix(), self.classes, save=save,
                                           held_out=held_out)

    def plot_top_losses(self, k: int = 9, save: str | Path | None = None):
        """The images with the largest losses, titled predicted / actual / probability / loss."""
        from convscope import plots

        if self.images is None:
            raise UsageError("These interpretation results hold no images (saved without "
                             "them); plot_top_losses needs them.")
        top = self.top_losses(k)
        images = self.images[[t["index"] for t in top]]
        titles = [f"{t['predicted']}/{t['actual']} {t['probability']:.2f} {t['loss']:.2f}"
                  for t in top]
        return plots.show_images(images, titles, save=save)

    def _repr_html_(self) -> str:
        from convscope.display import table_html

        worst = self.most_confused()[:5]
        return (f"<p>Interpretation of {len(self)} images: accuracy {self.accuracy():.2%}</p>"
                + table_html([{"actual": a, "predicted": p, "images": n} for a, p, n in worst],
                             left=("actual", "predicted")))

    def __repr__(self) -> str:
        return (f"Interpretation: {len(self)} images, {len(self.classes)} classes, accuracy "
                f"{self.accuracy():.2%}; most confused: "
                f"{self.most_confused()[:3]}")

    # --- saving --------------------------------------------------------------------------
    def save(self, path: str | Path, k: int = 16) -> None:
        """Write the per-image results and the `k` top-loss images (safetensors, atomic)."""
        from safetensors.torch import save

        from convscope.files import atomic_write_bytes

        tensors = {"preds": self.preds.contiguous(), "targs": self.targs.contiguous(),
                   "probs": self.probs.contiguous(), "losses": self.losses.contiguous()}
        if self.images is not None and len(self):
            idx = torch.tensor([t["index"] for t in self.top_losses(k)])
            tensors["top_index"] = idx
            tensors["top_images"] = self.images[idx].contiguous()
        atomic_write_bytes(path, save(tensors, metadata={"format": FORMAT,
                                                         "classes": json.dumps(self.classes)}))

    @classmethod
    def load(cls, path: str | Path) -> Interpretation:
        """Read what `save` wrote; `images` then holds the top-loss images in their places."""
        from convscope.files import read_safetensors

        t, meta = read_safetensors(path, FORMAT, "an interpretation file")
        images = None
        if "top_images" in t:
            images = torch.zeros(len(t["targs"]), *t["top_images"].shape[1:], dtype=torch.uint8)
            images[t["top_index"]] = t["top_images"]
        return cls(t["preds"], t["targs"], t["probs"], t["losses"],
                   json.loads(meta["classes"]), images)
