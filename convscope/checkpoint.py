"""Checkpoints: everything needed to continue training exactly where it stopped, in one file.

A checkpoint is one safetensors file, written atomically (temp file, fsync, rename), so a kill
at any moment leaves either the old checkpoint or the new one. It holds:
- tensors: the model's state_dict ("model.*"), the optimizer's state tensors ("optim.*"),
  torch's CPU (and CUDA) RNG state and the shuffling generator's state ("rng.*");
- every attached callback's state (`Callback.state_dict`): its tensors as "cb.<name>.<key>"
  (ActivationStats' records and sampling generator), the rest as JSON (the Recorder's
  history, the grad scaler's loss scale);
- JSON metadata: the format version, the position (next epoch and batch, steps taken), the
  world it was trained in (processes and global batch size), the optimizer's param groups and
  non-tensor state, Python's and NumPy's RNG states, and the callbacks' JSON state.
Loading never unpickles anything: a file from anyone is safe to open.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convscope.errors import UsageError
from convscope.files import check_format_version, read_safetensors, read_safetensors_bytes

FORMAT = "convscope.checkpoint"
VERSION = 2  # 2: every callback's state and the world size (1: the Recorder's only)


def bare_model(model: nn.Module) -> nn.Module:
    """The model itself, out of the wrappers training may put around it: DistributedDataParallel
    (`.module`) and torch.compile (`._orig_mod`), whose state_dict keys carry a prefix. A
    checkpoint holds the bare model's keys, so a run saved in several processes resumes in
    one, and the other way round."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


@dataclass(frozen=True)
class Position:
    """Where training resumes: `epoch` and `batch` are the next ones to run; `train_iter` the
    training batches done so far (schedules read it), `n_epoch` the length of the fit."""

    epoch: int
    batch: int
    train_iter: int
    n_epoch: int


def capture_rng(loader_state: torch.Tensor) -> tuple[dict, dict]:
    """Every random state training draws from: torch's (CPU and CUDA) and the data order's as
    tensors; Python's and NumPy's as plain lists."""
    tensors = {"rng.torch": torch.get_rng_state(), "rng.loader": loader_state}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {"python": list(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def restore_rng(tensors: dict, meta: dict, loader: torch.Generator) -> None:
    """Put back what `capture_rng` took, the data order's generator `loader` included."""
    torch.set_rng_state(tensors["rng.torch"])
    loader.set_state(tensors["rng.loader"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def world_of(learn) -> dict:
    """The processes a learner trains in and its global batch size (per-process bs x N)."""
    dist = getattr(learn, "distributed", None)
    size = dist.info.world_size if dist is not None else 1
    return {"world_size": size, "global_bs": learn.dls.train.bs * size}


def save_checkpoint(learn, path: str | Path, position: Position,
                    loader_state: torch.Tensor) -> Path:
    """Write the learner's full training state at `position`, atomically.

    Args:
        loader_state: the shuffling generator's state to resume from: for a checkpoint in
            the middle of an epoch, its state before that epoch's shuffle.
    """
    from safetensors.torch import save

    from convscope.files import atomic_write_bytes

    path = Path(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in bare_model(learn.model).state_dict().items()}
    opt_meta: dict = {"groups": [], "extra": {}}
    if learn.opt is not None:
        sd = learn.opt.state_dict()
        for pid, state in sd["state"].items():
            for k, v in state.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
                else:
                    opt_meta["extra"][f"{pid}.{k}"] = v
        opt_meta["groups"] = sd["param_groups"]
    rng_tensors, rng_meta = capture_rng(loader_state)
    tensors.update(rng_tensors)
    callbacks: dict[str, dict] = {}
    for cb in learn.cbs:
        state = cb.state_dict()
        if state is None:
            continue
        callbacks[cb.name] = {}
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"cb.{cb.name}.{k}"] = v.detach().cpu().contiguous()
            else:
                callbacks[cb.name][k] = v
    meta = {
        "format": FORMAT, "version": str(VERSION),
        "position": json.dumps(position.__dict__),
        "world": json.dumps(world_of(learn)),
        "optimizer": json.dumps(opt_meta),
        "rng": json.dumps(rng_meta),
        "callbacks": json.dumps(callbacks),
    }
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def save_learner(learn, path: str | Path) -> Path:
    """`learn.save(path)`: a checkpoint of the learner as it stands, outside any fit."""
    pos = Position(learn.n_epoch, 0, learn.train_iter, learn.n_epoch)
    return save_checkpoint(learn, path, pos, learn.dls.train.generator.get_state())


def read_checkpoint(path: str | Path, payload: bytes | None = None) -> tuple[dict, dict]:
    """The tensors and metadata of a checkpoint file, checked to be one.

    Args:
        payload: the file's bytes, when they came from another process rather than a disk.
    Raises:
        ValueError: missing, truncated, corrupt, foreign or of a newer format version.
    """
    path = Path(path)
    if payload is not None:
        tensors, meta = read_safetensors_bytes(payload, str(path), FORMAT,
                                               "a convscope checkpoint")
    else:
        tensors, meta = read_safetensors(path, FORMAT, "a convscope checkpoint")
    check_format_version(meta, VERSION, path, "checkpoint", default="0")
    try:
        parsed = {k: json.loads(meta[k]) for k in ("position", "optimizer", "rng")}
        if "callbacks" in meta:
            parsed["callbacks"] = json.loads(meta["callbacks"])
        else:  # version 1 held the Recorder's state alone
            recorder = json.loads(meta["recorder"])
            parsed["callbacks"] = {} if recorder is None else {"recorder": recorder}
        parsed["world"] = json.loads(meta.get("world", '{"world_size": 1, "global_bs": null}'))
    except (KeyError, ValueError) as e:
        raise UsageError(f"{path}: checkpoint metadata is incomplete or corrupt: {e}") from None
    wrong = _wrong_shape(parsed, tensors)
    if wrong:
        raise UsageError(f"{path}: checkpoint metadata is corrupt: {wrong}")
    return tensors, parsed


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _wrong_shape(meta: dict, tensors: dict) -> str | None:
    """What in a checkpoint's parsed metadata is not of the shape convscope writes (None:
    all is), so a damaged or hand-edited file is refused before anything is restored."""
    pos = meta["position"]
    if not (isinstance(pos, dict) and set(pos) == {"epoch", "batch", "train_iter", "n_epoch"}
            and all(_is_count(v) for v in pos.values()) and pos["epoch"] <= pos["n_epoch"]):
        return f"position {pos!r}, expected epoch, batch, train_iter and n_epoch counts"
    opt = meta["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("groups"), list)
            and all(isinstance(g, dict) for g in opt["groups"])
            and isinstance(opt.get("extra"), dict)
            and all(isinstance(k, str) and "." in k for k in opt["extra"])
            and all(isinstance(k, str) and k.split(".")[1].isdigit()
                    for k in tensors if k.startswith("optim."))):
        return "the optimizer state, expected its param groups and per-parameter state"
    rng = meta["rng"]
    if not (isinstance(rng, dict) and isinstance(rng.get("python"), list)
            and len(rng["python"]) == 3 and isinstance(rng.get("numpy"), list)
            and len(rng["numpy"]) == 5 and "rng.torch" in tensors and "rng.loader" in tensors):
        return "the random states, expected Python's, NumPy's, torch's and the data order's"
    if not (isinstance(meta["callbacks"], dict)
            and all(isinstance(v, dict) for v in meta["callbacks"].values())):
        return "the callbacks' state, expected one object per callback"
    world = meta["world"]
    if not (isinstance(world, dict) and _is_count(world.get("world_size"))
            and world["world_size"] >= 1):
        return (f"world {world!r}, expected the number of processes (1 or more) that wrote "
                f"it")
    return None


def check_architecture(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise a ValueError listing the keys and shapes that differ between model and state."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    shapes = sorted(k for k in set(own) & set(saved) if own[k] != saved[k])
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint: {', '.join(missing[:8])}"
                     + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    if unexpected:
        parts.append(f"not in the model: {', '.join(unexpected[:8])}"
                     + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
    if shapes:
        parts.append("shapes differ: " + ", ".join(
            f"{k} checkpoint {saved[k]} vs model {own[k]}" for k in shapes[:8]))
    raise UsageError(f"{path}: the checkpoint is for another architecture; "
                     + "; ".join(parts) + ".")


def check_world(learn, world: dict, path: Path) -> None:
    """Refuse to resume in another number of processes: the schedule counts steps per
    process, and a shard of the batches is another epoch length."""
    own = world_of(learn)
    if world["world_size"] == own["world_size"]:
        return
    n = world["world_size"]
    raise UsageError(
        f"{path} was written by a run in {n} process{'es' if n != 1 else ''} (global batch "
        f"{world['global_bs']}); this one runs in {own['world_size']}. Resume it in {n}: "
        f"`convscope train --resume RUN_DIR --nproc {n}` on one machine, or --nproc "
        f"{n} / M on each of M machines with --nnodes M.")


def load_checkpoint(learn, path: str | Path, resuming: bool = False) -> Position:
    """Restore the learner's model, optimizer, RNG states and callbacks' state from `path`;
    return the position to resume from. The shuffling generator is restored too.

    Args:
        resuming: called by a fit resuming from it, after every callback's before_fit: the
            world size must match, and a callback that holds state but finds none (or the
            other way round) is warned about, since its record would have a gap.
    """
    path = Path(path)
    payload = None
    if resuming and getattr(learn, "distributed", None) is not None:
        # rank 0's file, sent to every process: other machines need not see its disk
        from convscope.distributed import same_everywhere

        payload = same_everywhere(path.read_bytes() if learn.distributed.info.is_main
                                  else None)
    tensors, meta = read_checkpoint(path, payload)
    if resuming:
        check_world(learn, meta["world"], path)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model = bare_model(learn.model)
    check_architecture(model, model_state, path)
    model.load_state_dict(model_state)
    opt_meta = meta["optimizer"]
    if opt_meta["groups"]:
        if learn.opt is None:
            learn.opt = learn.opt_func(learn.model.parameters(), lr=learn.lr)
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        for k, v in opt_meta["extra"].items():
            pid, name = k.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        try:
            learn.opt.load_state_dict({"state": state, "param_groups": opt_meta["groups"]})
        except (ValueError, KeyError) as e:
            raise UsageError(f"{path}: the optimizer state does not fit this learner's "
                             f"optimizer: {e}") from None
    restore_rng(tensors, meta["rng"], learn.dls.train.generator)
    saved = meta["callbacks"]
    for cb in learn.cbs:
        if cb.name in saved:
            prefix = f"cb.{cb.name}."
            state = {**saved[cb.name], **{k[len(prefix):]: v for k, v in tensors.items()
                                          if k.startswith(prefix)}}
            cb.load_state_dict(state)
        elif resuming and cb.state_dict() is not None:
            warnings.warn(f"{path} holds no state for the callback {cb.name!r}: it starts "
                          f"afresh, and its record of the fit lacks what came before the "
                          f"checkpoint.", stacklevel=3)
    attached = {cb.name for cb in learn.cbs}
    if resuming and set(saved) - attached:
        warnings.warn(f"{path} holds the state of callbacks this learner lacks: "
                      f"{', '.join(sorted(set(saved) - attached))}; it is not restored.",
                      stacklevel=3)
    return Position(**meta["position"])
