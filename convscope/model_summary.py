"""Summary: per layer, the output shape, parameters, multiplications and receptive field.

What chapter 13 counts by hand. Multiplications are multiply-accumulates (MACs) for one
image: output positions x weights per output. For a conv that is H_out * W_out * C_out *
(C_in * kh * kw); a bias is an addition, not a multiplication, so it is not counted.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from torch import nn

from convscope.conv import receptive_field
from convscope.errors import UsageError
from convscope.layers import layer_type
from convscope.trace import trace


def macs(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Multiplications of `module` for one image with the given input and output shapes."""
    n_out = 1
    for d in out_shape:
        n_out *= d
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = module.weight.shape[1:].numel()  # C_in/groups * kh * kw
        return n_out * per_output
    if isinstance(module, nn.Linear):
        return n_out * module.in_features
    if isinstance(module, nn.modules.batchnorm._NormBase) and module.affine:
        return n_out  # one scale per value (the shift is an addition)
    return 0


@dataclass
class Summary:
    """The rows of a model summary; str() gives the table."""

    input_shape: tuple[int, ...]
    rows: list[dict] = field(default_factory=list)
    # why the receptive-field column is empty (a model that is not a chain of layers)
    no_receptive_field: str | None = None

    def to_dict(self) -> dict:
        """Plain lists and numbers (a run folder keeps it in history.json)."""
        return {"input_shape": list(self.input_shape), "no_receptive_field":
                self.no_receptive_field,
                "rows": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()}
                         for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> Summary:
        rows = [{**r, "output": tuple(r["output"])} for r in d["rows"]]
        return cls(tuple(d["input_shape"]), rows, d.get("no_receptive_field"))

    def _rf(self, r: dict) -> str:
        return "-" if r["rf"] is None else f"{r['rf']}x{r['rf']} (jump {r['jump']})"

    @property
    def total_params(self) -> int:
        return sum(r["params"] for r in self.rows)

    @property
    def trainable_params(self) -> int:
        return sum(r["trainable_params"] for r in self.rows)

    @property
    def total_macs(self) -> int:
        return sum(r["macs"] for r in self.rows)

    def __str__(self) -> str:
        head = ("layer", "type", "output", "params", "trainable", "MACs", "receptive field")
        body = [(r["layer"], r["type"], " x ".join(map(str, r["output"])), f"{r['params']:,}",
                 r["trainable"], f"{r['macs']:,}", self._rf(r))
                for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
        right = {3, 5}

        def fmt(cells) -> str:
            return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

        rule = "-" * len(fmt(head))
        lines = [f"input: {' x '.join(map(str, self.input_shape))}", fmt(head), rule]
        lines += [fmt(b) for b in body]
        lines += [rule, f"total params: {self.total_params:,} "
                        f"(trainable {self.trainable_params:,})",
                  f"total MACs per image: {self.total_macs:,}"]
        if self.no_receptive_field:
            lines.append(f"no receptive fields: {self.no_receptive_field}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from convscope.display import table_html

        rows = [{"layer": r["layer"], "type": r["type"],
                 "output": " x ".join(map(str, r["output"])), "params": f"{r['params']:,}",
                 "trainable": r["trainable"], "MACs": f"{r['macs']:,}",
                 "receptive field": self._rf(r)} for r in self.rows]
        return (f"<p>input: {' x '.join(map(str, self.input_shape))}</p>"
                + table_html(rows, left=("layer", "type", "output", "trainable"))
                + f"<p>total params: {self.total_params:,} (trainable "
                f"{self.trainable_params:,}); total MACs per image: {self.total_macs:,}</p>"
                + (f"<p>No receptive fields: {html.escape(self.no_receptive_field)}</p>"
                   if self.no_receptive_field else ""))


def summary(model: nn.Module, input_shape: tuple[int, ...]) -> Summary:
    """A table of the layers of `model` for one input of `input_shape` (C, H, W).

    >>> from convscope.models import simple_cnn
    >>> s = summary(simple_cnn(), (1, 28, 28))
    >>> s.rows[0]["output"], s.rows[0]["params"], s.rows[0]["macs"]
    ((8, 14, 14), 200, 39200)
    """

    records = trace(model, input_shape)
    out = Summary(tuple(input_shape))
    try:
        fields = {r["layer"]: r for r in receptive_field(model, input_shape)}
    except UsageError as e:  # not a chain of layers: the other columns still hold
        fields, out.no_receptive_field = {}, str(e)
    for rec in records:
        m = rec["module"]
        params = list(m.parameters(recurse=False))
        n = sum(p.numel() for p in params)
        n_train = sum(p.numel() for p in params if p.requires_grad)
        trainable = "-" if not params else ("yes" if n_train == n else
                                            "no" if n_train == 0 else "partly")
        rf = fields.get(rec["name"], {"size": None, "jump": None})
        out.rows.append({"layer": rec["name"], "type": layer_type(m),
                         "output": rec["out_shape"], "params": n, "trainable_params": n_train,
                         "trainable": trainable,
                         "macs": macs(m, rec["in_shape"], rec["out_shape"]),
                         "rf": rf["size"], "jump": rf["jump"]})
    return out
