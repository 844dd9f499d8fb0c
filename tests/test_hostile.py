"""Hostile inputs, one row each: data shaped to break convscope (script in a class name, a
16-bit image, a symlink loop, a cut-off file, a batch of one...) and what convscope must do
with it. Every row makes its own tiny data in tmp_path; nothing is downloaded."""

from __future__ import annotations

import gzip
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import check_page, find_chromium
from conftest import idx_bytes, write_idx_folder
from PIL import Image

from convscope import image_folders as imf
from convscope.callback import Callback
from convscope.data import DataLoaders, ImageData, idx_folder, read_idx
from convscope.errors import UsageError
from convscope.explore import write_explore
from convscope.image_folders import image_folder
from convscope.learner import Learner
from convscope.models import simple_cnn

needs_browser = pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"),
                                   reason="no chromium on PATH (CI installs it)")

# each sets window.pwned if the page ever parses it as markup
SCRIPTED = ["<img src=x onerror=window.pwned=1>", "<svg onload=window.pwned=2>",
            "x\u2028y & \u2029 __DATA__ __TITLE__ <b>bold"]  # no "/" in a folder name


# --- explore.html --------------------------------------------------------------------------
def make_run(run: Path, classes: list[str], size: int = 8) -> Path:
    """A run folder as `convscope train` leaves it, as far as explore reads it: the model's
    weights and the metadata beside them (classes included, as given)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = simple_cnn(in_channels=1, n_classes=len(classes))
    run.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(run / "model.safetensors"),
              metadata={"model": "simple_cnn", "bn": "true", "in_channels": "1",
                        "n_classes": str(len(classes)), "classes": json.dumps(classes),
                        "input_shape": json.dumps([1, size, size]), "mean": "[0.5]",
                        "std": "[0.25]"})
    return run


def open_explore(run: Path, tmp_path: Path, source: str = "a test image") -> dict:
    """Write the run's explore page, open it in Chromium, and read back what it shows."""
    image = torch.arange(64, dtype=torch.uint8).view(1, 8, 8) * 3
    html = write_explore(run, tmp_path / "explore.html", image, source)
    expression = ("new Promise(done => setTimeout(() => done(JSON.stringify({"
                  "pwned: window.pwned ?? null, title: document.title,"
                  " h1: document.querySelector('h1').textContent,"
                  " info: document.getElementById('prediction').textContent,"
                  " classes: typeof D === 'undefined' ? null : D.classes,"
                  " scripts: document.scripts.length,"
                  " planted: document.querySelectorAll('img, svg').length,"
                  " bold: document.querySelectorAll('b').length})), 300))")

    def interact(call):
        result = call("Runtime.evaluate", expression=expression, awaitPromise=True,
                      returnByValue=True)
        return json.loads(result["result"]["value"])

    check = check_page(html, tmp_path / "explore.png", interact=interact)
    assert check.exceptions == [] and check.console_errors == []
    return check.result


def shows_safely(shown: dict, classes: list[str], title: str) -> None:
    assert shown["pwned"] is None and shown["planted"] == 0 and shown["scripts"] == 1
    assert shown["bold"] == 1  # the page's own: the predicted class
    assert shown["title"] == title and shown["h1"] == title
    assert shown["classes"] == classes  # the data reached the script exactly as written
    assert any(shown["info"].startswith(f"Prediction: {c} (") for c in classes), shown["info"]


def case_hostile_class_folders(tmp_path):
    root = tmp_path / "d"
    for i, name in enumerate(SCRIPTED):
        (root / name).mkdir(parents=True)
        for j in range(3):
            Image.new("L", (8, 8), 60 * i + j).save(root / name / f"{j}.png")
    data = image_folder(root, size=8, valid_pct=0.34, cache=None)
    assert data.classes == sorted(SCRIPTED)
    shown = open_explore(make_run(tmp_path / "run", data.classes), tmp_path)
    shows_safely(shown, data.classes, "convscope explore: run, a test image")


def case_hostile_run_folder_name(tmp_path):
    name = "__DATA__ <img src=x onerror=window.pwned=4> __TITLE__ &amp;"
    classes = ["<img src=x onerror=window.pwned=5>", "b"]
    shown = open_explore(make_run(tmp_path / name, classes), tmp_path,
                         source="<script>window.pwned=6</script>")
    shows_safely(shown, classes,
                 f"convscope explore: {name}, <script>window.pwned=6</script>")


def case_hostile_metadata_classes(tmp_path):
    classes = ["</script><script>window.pwned=7</script>", "<!--", "<script>", "\u2028'\"\\",
               "</SCRIPT ><img src=x onerror=window.pwned=8>"]
    shown = open_explore(make_run(tmp_path / "run", classes), tmp_path)
    shows_safely(shown, classes, "convscope explore: run, a test image")


def case_metadata_classes_not_a_list_of_names(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = make_run(tmp_path / "run", ["a", "b"])
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    image = torch.zeros(1, 8, 8, dtype=torch.uint8)
    for bad in ('{"a": 1}', "[1, 2]", "not json"):
        save_file(load_file(run / "model.safetensors"), str(run / "model.safetensors"),
                  metadata={**meta, "classes": bad})
        with pytest.raises(UsageError, match=r"model.safetensors: .*classes.*Received: "):
            write_explore(run, tmp_path / "e.html", image, "x")
    save_file(load_file(run / "model.safetensors"), str(run / "model.safetensors"),
              metadata={**meta, "n_classes": "two"})
    with pytest.raises(UsageError, match=r"model.safetensors: .*Received: .*n_classes='two'"):
        write_explore(run, tmp_path / "e.html", image, "x")


# --- image folders ---------------------------------------------------------------------------
def two_classes(root: Path, n: int = 3) -> Path:
    for c, value in (("a", 40), ("b", 200)):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", (6, 6), value + i).save(root / c / f"{i}.png")
    return root


def case_16bit_images(tmp_path):
    root = tmp_path / "d"
    for cls, value in (("dim", 1000), ("bright", 60000)):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("I;16", (6, 6), value + i).save(root / cls / f"{i}.png")
            Image.new("I;16", (6, 6), value + i).save(root / cls / f"{i}.tif")
    with Image.open(root / "dim" / "0.png") as im:
        assert im.mode in ("I;16", "I")
    data = image_folder(root, size=6, valid_pct=0.34, cache=None)
    x = torch.cat([data.x_train, data.x_valid]).float().flatten(1).mean(1)
    y = torch.cat([data.y_train, data.y_valid])
    dim, bright = data.classes.index("dim"), data.classes.index("bright")
    # scaled by the bit depth: 1000 -> 4, 60000 -> 233 (clipping made both 255)
    assert set(x[y == dim].round().tolist()) == {4.0}
    assert set(x[y == bright].round().tolist()) == {233.0}


def case_32bit_float_image_is_refused(tmp_path):
    root = two_classes(tmp_path / "d")
    Image.new("F", (6, 6), 0.5).save(root / "a" / "float.tif")
    with pytest.raises(UsageError, match=r"float.tif: mode F .*0-255"):
        image_folder(root, cache=None)


def case_symlinked_class_folder_loop(tmp_path):
    for where in ("root", "ancestor", "split root", "sibling"):
        base = tmp_path / where.replace(" ", "_")
        if where == "split root":
            root = base / "d"
            two_classes(root / "train")
            two_classes(root / "valid")
            link, target = root / "train" / "loop", root
        else:
            root = two_classes(base / "d")
            link = root / "loop"
            target = {"root": root, "ancestor": base, "sibling": root / "a"}[where]
        link.symlink_to(target, target_is_directory=True)
        with pytest.raises(UsageError) as err:
            image_folder(root, cache=None)
        message = str(err.value)
        assert str(link) in message and str(target) in message, message
        assert message.count("\n") == 0


def cached(tmp_path) -> tuple[Path, Path, ImageData]:
    root, cache = two_classes(tmp_path / "d"), tmp_path / "cache"
    data = image_folder(root, size=6, cache=cache)
    imf.wait_for_cache_writes()
    return root, cache, data


def case_truncated_cache(tmp_path):
    root, cache, first = cached(tmp_path)
    (npy,) = cache.glob("*.npy")
    whole = npy.stat().st_size
    npy.write_bytes(npy.read_bytes()[: whole // 2])
    again = image_folder(root, size=6, cache=cache)
    imf.wait_for_cache_writes()
    assert torch.equal(again.x_train, first.x_train) and npy.stat().st_size == whole
    np.save(npy, np.zeros((2, 1, 6, 6), np.uint8))  # readable, but not this set's shape
    again = image_folder(root, size=6, cache=cache)
    imf.wait_for_cache_writes()
    assert torch.equal(again.x_train, first.x_train) and npy.stat().st_size == whole
    (meta,) = cache.glob("*.json")
    meta.write_text('{"kept": [0, 1')
    assert torch.equal(image_folder(root, size=6, cache=cache).x_train, first.x_train)


def case_read_only_cache(tmp_path):
    root, cache = two_classes(tmp_path / "d"), tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)

    def refuse(path, write):
        raise PermissionError(13, "Permission denied", str(path))

    with pytest.MonkeyPatch.context() as mp:
        if os.geteuid() == 0:  # root writes through a read-only mode: refuse as the kernel would
            mp.setattr(imf, "atomic_write", refuse)
            mp.setattr(imf, "atomic_write_bytes", refuse)
        try:
            data = image_folder(root, size=6, cache=cache)
            imf.wait_for_cache_writes()
        finally:
            cache.chmod(0o755)
    assert len(data.y_train) + len(data.y_valid) == 6 and list(cache.iterdir()) == []


# --- IDX files -------------------------------------------------------------------------------
def case_truncated_gz(tmp_path):
    rng = np.random.default_rng(0)
    payload = idx_bytes(rng.integers(0, 256, (30, 28, 28)).astype(np.uint8))
    whole = gzip.compress(payload)
    for cut in (len(whole) // 2, len(whole) - 3, len(whole) - 9):
        path = tmp_path / "images.gz"
        path.write_bytes(whole[:cut])
        with pytest.raises(UsageError) as err:
            read_idx(path)
        message = str(err.value)
        assert "truncated" in message and "trailing" not in message, message
        assert str(path) in message


def case_empty_idx_train_set(tmp_path):
    folder = write_idx_folder(tmp_path / "d", n_train=0)
    with pytest.raises(UsageError, match=r"train-images-idx3-ubyte.gz: holds 0 images"
                                         r".*expected at least one"):
        idx_folder(folder)


def case_nan_and_float_labels(tmp_path):
    rows = [(np.nan, r"found nan at position 3"), (np.inf, r"found inf at position 3"),
            (2.5, r"found 2.5 at position 3"), (-1.0, r"found -1.0 at position 3")]
    for value, says in rows:
        folder = write_idx_folder(tmp_path / "d")
        labels = np.arange(40).astype(np.float32) % 10
        labels[3] = value
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(labels, 0x0D)))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no numpy cast warning on the way
            with pytest.raises(UsageError, match=r"train-labels-idx1-ubyte.gz: expected "
                                                 r"whole-number labels >= 0 .*" + says):
                idx_folder(folder)
    # whole numbers stored as floats are labels like any other
    labels = (np.arange(40) % 10).astype(np.float32)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x0D)))
    assert idx_folder(folder).y_train.tolist() == list(range(10)) * 4


# --- a batch of one ----------------------------------------------------------------------------
class SeenImages(Callback):
    """The positions of the images each training batch held, per epoch."""

    def before_fit(self):
        self.epochs = []

    def before_train(self):
        self.epochs.append([])

    def after_batch(self):
        if self.learn.training:
            self.epochs[-1].append(self.learn.dl.batch_indices.cpu().clone())


def case_last_batch_of_one(tmp_path):
    g = torch.Generator().manual_seed(0)
    for n, bs in ((3001, 1000), (257, 256)):
        x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 2, (n,), generator=g)
        data = ImageData(x, y, x[:1], y[:1], ["a", "b"], "random")  # a valid batch of one too
        dls = DataLoaders.from_data(data, bs=bs)
        seen = SeenImages()
        learn = Learner(dls, simple_cnn(n_classes=2, widths=(4, 8)), cbs=[seen], progress=False)
        learn.fit(2, lr=1e-3)
        for epoch in seen.epochs:
            assert len(epoch) == len(dls.train) and min(len(b) for b in epoch) > 1
            assert sorted(torch.cat(epoch).tolist()) == list(range(n))
        # a restricted epoch of bs + 1 images: its last batch would hold one
        dls.train.restrict(torch.arange(0, bs + 1))
        learn.fit(1, lr=1e-3)
        assert [len(b) for b in seen.epochs[0]] == [bs + 1] and len(dls.train) == 1


CASES = [
    pytest.param(case_hostile_class_folders, id="class folders named as markup",
                 marks=needs_browser),
    pytest.param(case_hostile_run_folder_name, id="run folder named __DATA__ and markup",
                 marks=needs_browser),
    pytest.param(case_hostile_metadata_classes, id="markup in the metadata's classes",
                 marks=needs_browser),
    pytest.param(case_metadata_classes_not_a_list_of_names, id="classes not a list of names"),
    pytest.param(case_16bit_images, id="16-bit greyscale images"),
    pytest.param(case_32bit_float_image_is_refused, id="a 32-bit float image"),
    pytest.param(case_symlinked_class_folder_loop, id="symlinked class folder loop"),
    pytest.param(case_truncated_cache, id="truncated decoded-image cache"),
    pytest.param(case_read_only_cache, id="read-only cache folder"),
    pytest.param(case_truncated_gz, id="truncated .gz IDX file"),
    pytest.param(case_empty_idx_train_set, id="empty IDX train set"),
    pytest.param(case_nan_and_float_labels, id="NaN and float IDX labels"),
    pytest.param(case_last_batch_of_one, id="last training batch of one image"),
]


# --- run folders, settings and writes -------------------------------------------------------
TINY = ["--epochs", "1", "--bs", "16", "--no-stats"]


def tiny_data(tmp_path: Path) -> list[str]:
    return ["--data", str(write_idx_folder(tmp_path / "digits", n_train=64, n_valid=32,
                                           size=16))]


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def refused(args: list[str], expected: str, capsys) -> str:
    """Run the CLI, expect exit 2 with one line holding `expected`; return the line."""
    from conftest import cli_error

    from convscope.cli import main

    capsys.readouterr()
    assert main(args) == 2
    line = cli_error(capsys.readouterr().err)
    assert expected in line, line
    return line


def case_second_writer_is_refused(tmp_path, capsys):
    """Two runs into one folder: while one process owns it, a second is refused and writes
    nothing; a killed owner leaves no stuck lock behind."""
    import subprocess
    import sys

    from convscope.run_folder import Lock

    run = tmp_path / "run"
    with Lock(run, create=True):
        refused(["train", *tiny_data(tmp_path), *TINY, "--out", str(run)],
                "is in use by another convscope process", capsys)
        refused(["train", *tiny_data(tmp_path), *TINY, "--out", str(run), "--overwrite"],
                "is in use by another convscope process", capsys)
    assert not (run / "config.json").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from convscope.run_folder import Lock\n"
                               f"with Lock({str(run)!r}):\n print('held', flush=True)\n"
                               " time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UsageError, match="in use by another convscope process"):
        Lock(run).__enter__()
    holder.kill()
    holder.wait()
    with Lock(run):  # the system dropped the killed process's lock
        pass


def case_resume_from_an_epoch_end_checkpoint_keeps_the_history_exact(tmp_path, capsys):
    """Killed just after an epoch-end checkpoint, in the middle of an epoch, and during a
    later epoch that draws other images: the resumed history (losses, epoch ends, marks,
    epoch rows) and diagnosis equal the uninterrupted run's."""
    from conftest import StopAt, stripes

    from convscope.callbacks import CheckpointCallback, HardExamples
    from convscope.diagnosis import diagnose

    def learner(cbs=()):
        torch.manual_seed(0)
        dls = DataLoaders.from_data(stripes(256, 64), bs=32, seed=0)
        return Learner(dls, simple_cnn(n_classes=4), cbs=[HardExamples(0.5), *cbs],
                       progress=False)

    def shown(h):
        rows = [{k: v for k, v in r.items() if k != "time"} for r in h.values]
        return h.losses, h.smooth_losses, h.epoch_ends, h.marks, rows, h.hps

    ref = learner()
    ref.fit_one_cycle(3, 1e-2)
    for stop, every in (((1, 0), None), ((1, 1), 2), ((2, 0), None)):
        ck = tmp_path / f"ck{stop}{every}.safetensors"
        learner([CheckpointCallback(ck, every_batches=every), StopAt(*stop)]).fit_one_cycle(
            3, 1e-2)
        resumed = learner()
        resumed.fit_one_cycle(3, 1e-2, resume=ck)
        assert shown(resumed.recorder.history()) == shown(ref.recorder.history()), stop
        assert [f.kind for f in diagnose(history=resumed.recorder)] == [
            f.kind for f in diagnose(history=ref.recorder)]


def case_overwrite_keeps_files_convscope_did_not_write(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "own settings"}')
    (mine / "report.html").write_text("<p>my report</p>")
    before = files_of(mine)
    refused(["train", *tiny_data(tmp_path), *TINY, "--out", str(mine), "--overwrite"],
            "but convscope did not prepare it", capsys)
    assert files_of(mine) == before


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny complete run, trained once for the rows that need one."""
    from convscope.cli import main

    tmp = tmp_path_factory.mktemp("finished")
    run = tmp / "run"
    assert main(["train", *tiny_data(tmp), *TINY, "--out", str(run)]) == 0
    return run


def case_finished_run_without_its_checkpoint_is_not_retrained(tmp_path, capsys, finished):
    import shutil

    from convscope.cli import main

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "checkpoint.safetensors").unlink()
    before = files_of(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "is complete (1 epoch trained, its outputs written)" in capsys.readouterr().out
    assert files_of(run) == before


@pytest.mark.parametrize("args,expected", [
    (["--seed", "18446744073709551616"], "--seed: expected an integer from 0 to"),
    (["--lr", "1e308"], "--lr: expected a number > 0 and <= 1000, received '1e308'"),
    (["--nnodes", "2", "--rdzv-endpoint", "a b:29500"],
     "--rdzv-endpoint: expected HOST:PORT, e.g. 10.0.0.1:29500, received 'a b:29500'"),
    (["--nproc", "64", "--subset", "3000"],
     "--nproc: 64 processes but an epoch of 3,000 images at batch size 512 has 6 batches"),
    (["--bs", "1"], "--bs: expected 2 or more with batchnorm"),
])
def case_impossible_settings(tmp_path, capsys, args, expected):
    """Refused in one line before any work: nothing is created."""
    run = tmp_path / "run"
    refused(["train", *args, "--out", str(run)], expected, capsys)
    assert not run.exists()


def case_checkpoint_path_is_a_folder(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoint.safetensors").mkdir(parents=True)
    refused(["train", *tiny_data(tmp_path), *TINY, "--out", str(run)],
            "checkpoint.safetensors' is not a file (a folder?)", capsys)
    assert not (run / "config.json").exists()


def case_damaged_run_files(tmp_path, capsys, finished):
    """A metrics row short of values, a learning rate that is text: report, compare and
    --resume each say so in one line."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    good = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(good.splitlines()[0] + "\n0,1.0\n")
    refused(["report", str(run)], "metrics.csv: cannot be read as a run's metrics", capsys)
    (run / "metrics.csv").write_text(good)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "lr": "abc"}))
    refused(["report", str(run)], "--lr: expected a number > 0 and <= 1000, received 'abc'",
            capsys)
    refused(["compare", str(run), str(finished)], "--lr: expected a number", capsys)
    refused(["train", "--resume", str(run)], "--lr: expected a number", capsys)


def case_full_disk(tmp_path, capsys, monkeypatch, finished):
    """A write that fails for want of room: one line saying what was kept and what to run
    next; a write to a read-only place, from report, one line too."""
    import errno

    from convscope.run import outputs

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "metrics.csv")

    monkeypatch.setattr(outputs, "write_metrics_csv", full)
    run = tmp_path / "run"
    line = refused(["train", *tiny_data(tmp_path), *TINY, "--out", str(run)],
                   "could not write metrics.csv: No space left on device", capsys)
    assert "holds epoch 1, batch 0. Free space" in line and "--resume" in line
    monkeypatch.undo()

    from convscope import report

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(run / "report.html"))

    monkeypatch.setattr(report, "atomic_write_bytes", read_only)
    (run / "history.json").write_text(json.dumps({"losses": [], "smooth_losses": [],
                                                  "hps": {}, "values": []}))
    (run / "metrics.csv").write_text("epoch,accuracy\n")
    refused(["report", str(run)], "cannot write", capsys)
    # explore writes its page into the run folder: read-only, one line too
    from convscope import explore

    monkeypatch.setattr(explore, "atomic_write_bytes", read_only)
    refused(["explore", str(finished)], "Read-only file system", capsys)


def case_damaged_checkpoint_metadata(tmp_path, capsys, finished):
    """Each piece of a checkpoint's metadata with the wrong type: refused in one line
    naming it, by --resume (an unfinished run, so the checkpoint is read)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from convscope.checkpoint import read_checkpoint

    _, good = read_checkpoint(finished / "checkpoint.safetensors")
    tensors = load_file(finished / "checkpoint.safetensors")
    from safetensors import safe_open

    with safe_open(str(finished / "checkpoint.safetensors"), "pt") as f:
        raw = f.metadata()
    bad_values = [
        ("version", "abc", "format version 'abc', expected a whole number"),
        ("position", json.dumps({"epoch": "1"}), "position"),
        ("position", json.dumps({**good["position"], "batch": -3}), "position"),
        ("rng", json.dumps({"python": 1}), "the random states"),
        ("optimizer", json.dumps({"groups": "x", "extra": {}}), "the optimizer state"),
        ("callbacks", json.dumps([1, 2]), "the callbacks' state"),
        ("world", json.dumps({"world_size": 0, "global_bs": 16}), "world"),
        ("world", json.dumps({"world_size": "2"}), "world"),
    ]
    for key, value, expected in bad_values:
        run = tmp_path / f"run-{key}-{len(value)}"
        shutil.copytree(finished, run)
        (run / "report.html").unlink()  # unfinished outputs: --resume reads the checkpoint
        save_file(tensors, str(run / "checkpoint.safetensors"), metadata={**raw, key: value})
        line = refused(["train", "--resume", str(run)], "checkpoint metadata is corrupt",
                       capsys)
        assert expected in line, (key, line)


def case_truncated_weights_and_interpretation(tmp_path, capsys, finished):
    """Half of model.safetensors or of interpretation.safetensors: report, explore and
    compare each say which file, in one line."""
    import shutil

    for name, commands in (("model.safetensors", ("report", "explore")),
                           ("interpretation.safetensors", ("report", "compare"))):
        run = tmp_path / name
        shutil.copytree(finished, run)
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[:len(data) // 2])
        for command in commands:
            args = [command, str(run)] + ([str(finished), "--out", str(tmp_path / "c.html")]
                                          if command == "compare" else [])
            line = refused(args, f"{name}: cannot be read", capsys)
            assert "truncated or corrupt" in line or "deserializing" in line, line


def case_messages_that_mislead(tmp_path, capsys, finished):
    """A lost peer's line keeps the start of torch's message (it was cut to its last 80
    characters: "(rashing... GLHF!)"); a suggested command quotes a path with a space so it
    pastes into a shell."""
    import shutil

    from convscope.run.train import peer_lost

    torch_says = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed "
                  "by peer [127.0.0.1]:12345 " + "x" * 200 + " crashing... GLHF!")
    line = peer_lost(1, RuntimeError(torch_says))
    assert line.startswith("process 1: another process of the group stopped ([/pytorch/")
    assert "...); this one stops too" in line and len(line) < 240
    spaced = tmp_path / "my runs" / "run 1"
    shutil.copytree(finished, spaced)
    line = refused(["train", *tiny_data(tmp_path), *TINY, "--out", str(spaced)],
                   "holds a run already", capsys)
    assert f"`convscope train --resume '{spaced}'` continues it" in line


RUN_CASES = [
    pytest.param(case_messages_that_mislead, id="a lost peer, a path with a space"),
    pytest.param(case_truncated_weights_and_interpretation,
                 id="truncated weights and interpretation"),
    pytest.param(case_damaged_checkpoint_metadata, id="damaged checkpoint metadata"),
    pytest.param(case_second_writer_is_refused, id="two runs into one folder"),
    pytest.param(case_resume_from_an_epoch_end_checkpoint_keeps_the_history_exact,
                 id="resume after an epoch-end checkpoint"),
    pytest.param(case_overwrite_keeps_files_convscope_did_not_write,
                 id="--overwrite of someone's own files"),
    pytest.param(case_finished_run_without_its_checkpoint_is_not_retrained,
                 id="finished run, checkpoint removed"),
    pytest.param(case_checkpoint_path_is_a_folder, id="checkpoint path is a folder"),
    pytest.param(case_damaged_run_files, id="damaged metrics.csv and config.json"),
    pytest.param(case_full_disk, id="full disk, read-only folder"),
]


@pytest.mark.parametrize("case", CASES)
def test_hostile_input(case, tmp_path):
    case(tmp_path)


@pytest.mark.parametrize("case", RUN_CASES)
def test_hostile_run(case, tmp_path, capsys, monkeypatch, request):
    kwargs = {"capsys": capsys}
    if "finished" in case.__code__.co_varnames:
        kwargs["finished"] = request.getfixturevalue("finished")
    if "monkeypatch" in case.__code__.co_varnames:
        kwargs["monkeypatch"] = monkeypatch
    case(tmp_path, **kwargs)


test_impossible_settings = case_impossible_settings
