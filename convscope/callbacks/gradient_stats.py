"""GradientStats: how big each layer's gradients and updates are, step by step, cheaply.

The first check when one layer learns and another does not: per layer (each module holding
trainable parameters, named as in the model summary: "0.0" a conv, "0.1" its batchnorm) and
per recorded step, the gradient norm and the weight norm before the step, and the size of the
step relative to the weights, ||W_after - W_before|| / ||W_before|| (lr x update / weight for
plain SGD; what the optimizer really did for any other). Around 1e-3 is the usual healthy
value; a layer 100x below the others barely learns, one near 1e-1 is pushed too hard.

Like ActivationStats it computes on the model's device into preallocated tensors (a few foreach
norms per step) and copies to the CPU once per epoch; `every=N` records one step in N. Saved
with a run (gradient_stats.safetensors) and carried by checkpoints. plots.py draws it and
diagnose.py judges it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from convscope.callback import Callback
from convscope.callbacks.activation_stats import layer_index
from convscope.errors import UsageError
from convscope.layers import layer_type

FORMAT = "convscope.gradient_stats/1"
COLUMNS = ("grad_norm", "weight_norm", "update_ratio")


def parameter_layers(model: nn.Module) -> list[tuple[str, nn.Module, list[nn.Parameter]]]:
    """The modules that hold trainable parameters of their own, with those parameters."""
    from convscope.checkpoint import bare_model

    out = []
    for name, m in bare_model(model).named_modules():
        params = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if params:
            out.append((name, m, params))
    return out


class GradientStats(Callback):
    """Reached as `learn.gradient_stats`.

    After fit: `layer_names`, `batches` (the training step of each record) and `records`,
    a tensor (layers, records, 3) of grad_norm, weight_norm, update_ratio.
    """

    order = 45
    run_in_lr_find = False

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise UsageError(f"every must be >= 1. Received: every={every}.")
        self.every = every
        self.layer_names: list[str] = []
        self.layer_types: list[str] = []  # Conv2d, BatchNorm2d, ...: like is compared with like
        self.batches: list[int] = []
        self.records = torch.zeros(0, 0, 3)
        self._fitting = False

    def before_fit(self) -> None:
        learn = self.learn
        layers = parameter_layers(learn.model)
        self.layer_names = [n for n, _, _ in layers]
        self.layer_types = [layer_type(m) for _, m, _ in layers]
        self._params = [p for _, _, ps in layers for p in ps]
        device = learn.dls.device
        self._group = torch.tensor([g for g, (_, _, ps) in enumerate(layers) for _ in ps],
                                   device=device)
        self._before = [torch.empty_like(p) for p in self._params]  # weights before a step
        capacity = -(-learn.total_iters // self.every)
        self._rec = torch.zeros(len(layers), capacity, 3, device=device)
        self._count, self._pending, self._fitting = 0, False, True
        self.batches = []

    def _per_layer(self, norms: list[Tensor]) -> Tensor:
        """Norms of k groups of all parameters (k x params, group after group) -> (k, layers)
        per-layer norms (the root of the summed squares)."""
        sq = torch.stack(norms).float().square_().view(-1, len(self._params))
        out = torch.zeros(sq.shape[0], len(self.layer_names), device=sq.device)
        return out.index_add_(1, self._group, sq).sqrt_()

    def after_backward(self) -> None:
        learn = self.learn
        self._pending = learn.training and learn.train_iter % self.every == 0
        if self._pending:
            with torch.no_grad():
                torch._foreach_copy_(self._before, self._params)

    def after_step(self) -> None:
        # the gradients are still there (zeroed after this event): a few foreach ops over all
        # parameters and one per-layer sum for the three norms, no per-tensor op
        if not self._pending:
            return
        with torch.no_grad():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
            norms = torch._foreach_norm(grads + self._before)  # gradients, weights before
            torch._foreach_sub_(self._before, self._params)  # minus the update: same norm
            grad, weight, update = self._per_layer(norms + torch._foreach_norm(self._before))
            ratio = update / weight.clamp_min(1e-12)
            self._rec[:, self._count] = torch.stack([grad, weight, ratio], dim=1)
        self.batches.append(self.learn.train_iter)
        self._count += 1
        self._pending = False

    def after_epoch(self) -> None:
        self._collect()

    def after_fit(self) -> None:
        if self._fitting:
            self._collect()
        self._fitting = False

    def _collect(self) -> None:
        self.records = self._rec[:, :self._count].cpu()

    # --- reading -------------------------------------------------------------------------
    def _layer(self, idx: int | str) -> int:
        return layer_index(self.layer_names, idx)

    def series(self, column: str, idx: int | str) -> Tensor:
        """One layer's `column` (grad_norm, weight_norm or update_ratio) per recorded step."""
        return self.records[self._layer(idx), :, COLUMNS.index(column)]

    def plot(self, save: str | Path | None = None):
        """Update/weight ratio and gradient norm of every layer over training."""
        from convscope import plots

        return plots.plot_gradient_stats(self, save=save)

    # --- checkpoints and files -------------------------------------------------------------
    def state_dict(self) -> dict | None:
        if self._fitting:
            return {"layer_names": list(self.layer_names), "batches": list(self.batches),
                    "layer_types": list(self.layer_types),
                    "records": self._rec[:, :self._count].cpu()}
        if not self.layer_names:
            return None
        return {"layer_names": list(self.layer_names), "batches": list(self.batches),
                "layer_types": list(self.layer_types), "records": self.records}

    def load_state_dict(self, state: dict) -> None:
        names, records = list(state["layer_names"]), state["records"]
        if not self._fitting:
            self.layer_names, self.batches, self.records = names, list(state["batches"]), records
            self.layer_types = list(state.get("layer_types", [""] * len(names)))
            return
        if names != self.layer_names:
            raise UsageError(f"The checkpoint's gradient statistics are of layers {names}; this "
                             f"fit records {self.layer_names}. Resume with the same model.")
        n = records.shape[1]
        self._rec[:, :n] = records.to(self._rec.device)
        self._count, self.batches = n, list(state["batches"])
        self._collect()

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save

        from convscope.files import atomic_write_bytes

        tensors = {"records": self.records.contiguous(),
                   "batches": torch.tensor(self.batches, dtype=torch.int64)}
        meta = {"format": FORMAT, "layer_names": json.dumps(self.layer_names),
                "layer_types": json.dumps(self.layer_types), "every": str(self.every)}
        atomic_write_bytes(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> GradientStats:
        from convscope.files import read_safetensors

        tensors, meta = read_safetensors(path, FORMAT, "a gradient statistics file")
        obj = cls(every=int(meta["every"]))
        obj.layer_names = json.loads(meta["layer_names"])
        obj.layer_types = json.loads(meta.get("layer_types", "[]")) or [""] * len(
            obj.layer_names)
        obj.batches = tensors["batches"].tolist()
        obj.records = tensors["records"]
        return obj
