"""trace: run a model once on a zero image and list the layers in the order they ran.

The common ground of the model summary (shapes, MACs) and the receptive field (conv.py): both
need each leaf module with its input and output shapes, in execution order, and neither
should change the model to get them.
"""

from __future__ import annotations

import torch
from torch import nn


def trace(model: nn.Module, input_size: tuple[int, ...]) -> list[dict]:
    """Run one zero image through `model` and list its leaf modules in the order they ran,
    each with its name and output shape (batch dim dropped).

    No side effects: the model runs in eval mode without gradients (so batchnorm's running
    statistics and every .grad stay as they were), then every module gets back its own mode.
    """
    shape = tuple(input_size) if len(input_size) == 3 else (1, *input_size)
    names = {m: n for n, m in model.named_modules()}
    records: list[dict] = []

    def hook(module: nn.Module, inputs, output) -> None:
        out = output[0] if isinstance(output, tuple) else output
        records.append({"name": names[module], "module": module,
                        "in_shape": tuple(inputs[0].shape[1:]), "out_shape": tuple(out.shape[1:]),
                        # which tensors: a chain's layer reads what the one before it wrote
                        "in_id": id(inputs[0]), "out_id": id(out), "held": (inputs[0], out)})

    leaves = [m for m in model.modules() if not list(m.children())]
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for m in leaves]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=device))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return records


def not_a_chain(records: list[dict]) -> str | None:
    """Why the traced layers are not one chain (each reading exactly what the layer before it
    wrote), or None when they are: receptive fields add up layer by layer only along a chain,
    and a residual block's sum or a branch reads other tensors too."""
    for before, rec in zip(records, records[1:], strict=False):
        if rec["in_id"] != before["out_id"]:
            return (f"layer {rec['name']} ({type(rec['module']).__name__}) reads a tensor that "
                    f"layer {before['name']} did not write (a skip connection, a sum, or work "
                    f"done outside a layer)")
    return None
