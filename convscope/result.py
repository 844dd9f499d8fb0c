"""A run's result: the one accuracy every place shows (metrics.csv, history.json, the command's
last lines, the report's headline, compare), and what it was measured with.

The result is the accuracy of the run's final evaluation: with test-time augmentation when the
run's recipe uses it (and the model was sure enough of the images for it to be tried), the
plain accuracy of the last epoch otherwise. Where augmentation ran, the plain accuracy is shown
beside it, and a result that augmentation lowered says so. Importable without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """Attributes:
        accuracy: the run's result (nan when no epoch finished).
        plain: the last epoch's accuracy on the plain images.
        held_out: what the images are ("test" or "valid").
        tta: what test-time augmentation did: {"accuracy", "looked_at", "unsure_below",
            "seconds"}, or {"skipped": why}; None when the run did not ask for it.
    """

    accuracy: float
    plain: float
    held_out: str = "valid"
    tta: dict | None = None

    @classmethod
    def of(cls, values: list[dict], meta: dict) -> Result:
        """The result recorded in a run's epoch rows and history meta."""
        plain = values[-1].get("accuracy", math.nan) if values else math.nan
        tta = meta.get("tta")
        accuracy = tta["accuracy"] if tta and "accuracy" in tta else plain
        return cls(accuracy, plain, meta.get("held_out", "valid"), tta)

    @property
    def augmented(self) -> bool:
        return bool(self.tta) and "accuracy" in self.tta

    def how(self) -> str:
        """How the result was measured, in words ("" for a plain evaluation)."""
        if not self.tta:
            return ""
        if not self.augmented:
            return f"test-time augmentation skipped: {self.tta['skipped']}"
        t = self.tta
        looked = (f"the {t['looked_at']:,} images with top probability under "
                  f"{t['unsure_below']:g} averaged with their four 1-pixel shifts"
                  if t.get("unsure_below") is not None
                  else "each image averaged with its four 1-pixel shifts")
        if self.accuracy < self.plain:
            return (f"with test-time augmentation ({looked}), which LOWERED it from "
                    f"{self.plain:.2%} plain")
        return f"with test-time augmentation ({looked}); {self.plain:.2%} plain"

    def line(self, epochs: int, seconds: float | None = None) -> str:
        """'test accuracy 99.14% after 3 epochs (4.4s of training), with ...': the headline."""
        if not math.isfinite(self.accuracy):
            return "no epoch finished"
        how = self.how()
        took = f" ({seconds:.1f}s of training)" if seconds is not None else ""
        return (f"{self.held_out} accuracy {self.accuracy:.2%} after {epochs} "
                f"epoch{'s' if epochs != 1 else ''}{took}" + (f", {how}" if how else ""))
