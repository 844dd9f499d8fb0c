"""explore: one image through a trained run's model, every conv layer's activation maps on a
page, and trace precedents and dependents in the browser.

Click (or move to with the arrow keys and press Enter) any activation: its receptive field is
outlined in the input, the window it reads in each layer between is outlined there, and its
value and the kernel that made it are shown. Click an input pixel: every activation it reaches
is outlined (trace dependents). The page is one self-contained file (inline script and data,
nothing fetched), so it works offline; explore.html beside this module is its template. The
geometry is each conv's kernel size, stride and padding, as `conv.receptive_field` computes it;
the tests click an activation in Chromium and compare the outlined input box with
receptive_field's.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import torch
from torch import nn

from convscope import run_folder
from convscope.errors import UsageError
from convscope.files import atomic_write_bytes


def load_model(run_dir: str | Path, model_spec: str | None = None):
    """The run's trained model and the metadata saved beside its weights (inference.rebuild:
    a model of the user's own file only when `model_spec` names it)."""
    from convscope.inference import rebuild

    if not (Path(run_dir) / run_folder.MODEL).is_file():
        raise UsageError(f"{run_dir}: no model.safetensors; expected the folder of a finished "
                         f"`convscope train` run")
    return rebuild(run_dir, model_spec, who="explore")


def class_names(meta: dict[str, str], path: str | Path) -> list[str]:
    """The class names saved in a run's metadata: a JSON list of strings, or none."""
    raw = meta.get("classes", "[]")
    try:
        classes = json.loads(raw)
    except ValueError:
        classes = None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise UsageError(f"{path}: metadata 'classes' must be a JSON list of class names. "
                         f"Received: {raw[:200]!r}.")
    return classes


def blocks_of(model: nn.Module) -> list[tuple[str, nn.Module, nn.Conv2d]]:
    """Each conv block (name, block, its conv), in order."""
    from convscope.callbacks.activation_stats import conv_blocks

    out = []
    for name, block in conv_blocks(model):
        conv = next(m for m in block.modules() if isinstance(m, nn.Conv2d))
        out.append((name, block, conv))
    return out


@torch.no_grad()
def activations(model: nn.Module, image: torch.Tensor, mean, std) -> tuple[list, list]:
    """The normalised image through `model`: each conv block's output (C, H, W) and geometry."""
    x = ((image.float() / 255 - torch.tensor(mean).view(-1, 1, 1))
         / torch.tensor(std).view(-1, 1, 1))[None]
    blocks = blocks_of(model)
    outs: dict[str, torch.Tensor] = {}
    handles = [b.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o[0]))
               for n, b, _ in blocks]
    try:
        logits = model(x)[0]
    finally:
        for h in handles:
            h.remove()
    layers = []
    for name, _, conv in blocks:
        a = outs[name]
        layers.append({"name": name, "k": conv.kernel_size[0], "s": conv.stride[0],
                       "p": conv.padding[0], "shape": list(a.shape),
                       "values": [round(v, 4) for v in a.flatten().tolist()],
                       "weights": [round(v, 4) for v in conv.weight.flatten().tolist()],
                       "wshape": list(conv.weight.shape)})
    return layers, logits.softmax(0).tolist()


# Inside <script> the HTML parser looks for "</script" and "<!--" before JavaScript reads a
# thing, so no "<" may reach it; ">" and "&" go too, and U+2028/2029, which end a line in
# older JavaScript strings. JSON's \u escapes read back as the same characters.
_SCRIPT_SAFE = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
                0x2028: "\\u2028", 0x2029: "\\u2029"}


def script_json(value) -> str:
    """`value` as JSON that can sit inside an inline <script> whatever its strings hold."""
    return json.dumps(value).translate(_SCRIPT_SAFE)


def page(layers: list[dict], image: torch.Tensor, probs: list[float], classes: list[str],
         title: str) -> str:
    """The self-contained explorer page. The page builds all its text with textContent, so a
    class name or title is shown as written, never run as markup."""
    data = {"image": image.permute(1, 2, 0).flatten().tolist(), "ishape": list(image.shape),
            "layers": layers, "probs": probs, "classes": classes}
    values = {"__TITLE__": html.escape(title), "__DATA__": script_json(data)}
    template = (Path(__file__).with_name("explore.html")).read_text()
    # one pass: a value that holds a placeholder's name (a run folder called __DATA__) is
    # never scanned again
    return re.sub("|".join(values), lambda m: values[m.group(0)], template)


def write_explore(run_dir: str | Path, out: str | Path, image: torch.Tensor, source: str,
                  model_spec: str | None = None) -> Path:
    """Run `image` (uint8 C x H x W) through the run's model and write the explorer page.
    The page traces receptive fields, which add up only along a chain of convolutions: a
    model that is not one is refused, saying where it branches."""
    import torch.nn.functional as F

    from convscope.trace import not_a_chain, trace

    model, meta = load_model(run_dir, model_spec)
    c, h, w = json.loads(meta["input_shape"])
    branch = not_a_chain(trace(model, (c, h, w)))
    if branch is not None:
        raise UsageError(f"explore traces receptive fields through a chain of convolutions, "
                         f"and this model is not one: {branch}")
    if image.shape[0] != c:
        image = (image.float().mean(0, keepdim=True) if c == 1
                 else image.expand(3, -1, -1).float()).round().to(torch.uint8)
    if tuple(image.shape[-2:]) != (h, w):
        image = F.interpolate(image[None].float(), size=(h, w), mode="area")[0].round().to(
            torch.uint8)
    layers, probs = activations(model, image, json.loads(meta["mean"]), json.loads(meta["std"]))
    classes = class_names(meta, Path(run_dir) / run_folder.MODEL)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"convscope explore: {Path(run_dir).name}, {source}"
    atomic_write_bytes(out, page(layers, image, probs, classes, title).encode())
    return out
