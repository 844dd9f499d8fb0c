"""Two processes on this machine with PyTorch's own engine (gloo), as torchrun starts them."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from convscope import DataLoaders, Learner, mnist, simple_cnn
from convscope.cli import main

WORKER = Path(__file__).parent / "ddp_worker.py"


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun(str(WORKER), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_weights_identical_across_ranks(ddp_run):
    a, b = load_file(ddp_run / "rank0.safetensors"), load_file(ddp_run / "rank1.safetensors")
    params = [k for k in a if not k.endswith(("running_mean", "running_var",
                                              "num_batches_tracked"))]
    assert params
    for k in params:
        assert torch.equal(a[k], b[k]), k  # same start (broadcast) and the same averaged steps
    for k in a:  # batchnorm statistics are each process's own since the last broadcast
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=0.2, atol=0.2)


def test_metrics_reduced_over_the_whole_valid_set(ddp_run):
    r0 = json.loads((ddp_run / "rank0.json").read_text())
    r1 = json.loads((ddp_run / "rank1.json").read_text())
    assert r0["valid_count"] == r1["valid_count"] == 1000  # both halves counted
    assert [v["accuracy"] for v in r0["values"]] == [v["accuracy"] for v in r1["values"]]
    assert r0["batches"] == 2 * (3072 // 64 // 2)  # each rank trained on half the batches


def test_hard_examples_choose_the_same_images_in_every_process(tmp_path):
    """Each process trains on its own batches, yet both hold every image's loss (gathered
    each step) and so draw later epochs from the same images: the hardest 25% by those
    losses."""
    proc = torchrun(str(WORKER), str(tmp_path), "--hard", "0.25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["chosen"] == r1["chosen"] and r0["losses"] == r1["losses"]
    assert r0["final_losses"] == r1["final_losses"]
    assert r0["chosen"][0] is None  # the first epoch: every image
    for chosen, losses in zip(r0["chosen"][1:], r0["losses"][1:], strict=True):
        assert all(math.isfinite(v) for v in losses)  # every image was seen, by one process
        assert len(chosen) == 768  # a quarter of 3,072
        bar = sorted(losses, reverse=True)[767]
        assert all(losses[i] >= bar for i in chosen)
        assert sum(v > bar for v in losses) < 768
    # 24 batches each in epoch 0, then 768 images: 12 batches, 6 each
    assert r0["epoch_ends"] == r1["epoch_ends"] == [24, 30, 36]
    a, b = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    for k in a:
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(a[k], b[k]), k


def test_accuracy_in_line_with_one_process(ddp_run):
    """One process with the same global batch (2 x 64) and the same number of steps."""
    torch.manual_seed(0)
    data = mnist().subset(3072, 1000, seed=0)
    learn = Learner(DataLoaders.from_data(data, bs=128, seed=0), simple_cnn(), progress=False)
    learn.fit_one_cycle(2, 1e-2)
    single = learn.recorder.values[-1]["accuracy"]
    ddp = json.loads((ddp_run / "rank0.json").read_text())["values"][-1]["accuracy"]
    assert ddp > 0.85 and abs(ddp - single) < 0.03, (ddp, single)


def test_cli_nproc_2_writes_one_run_folder(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "convscope", "train", "--nproc", "2",
                           "--subset", "2048", "--bs", "64", "--epochs", "1", "--no-stats",
                           "--out", str(run)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test accuracy ") == 1  # rank 0 alone prints
    # the cores are shared out: every one busy, none oversubscribed
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"distributed: 2 processes of {threads} thread(s) each" in proc.stdout
    for name in ("model.safetensors", "metrics.csv", "checkpoint.safetensors", "report.html"):
        assert (run / name).is_file(), name
    # the checkpoint holds the model's own keys, not DistributedDataParallel's "module.*"
    keys = [k for k in load_file(run / "checkpoint.safetensors") if k.startswith("model.")]
    assert keys and not any(k.startswith("model.module.") for k in keys)
    assert main(["train", "--resume", str(run)]) == 0  # resumes in one process


def test_sync_bn_on_cpu_is_refused(capsys):
    assert main(["train", "--nproc", "2", "--sync-bn"]) == 2
    assert "sync_bn needs --device cuda" in capsys.readouterr().err


# Imported by every Python process started with this folder first on PYTHONPATH: in the
# processes torchrun starts (LOCAL_RANK set), it notes each decode of an image folder.
DECODE_SPY = """
import os
if "LOCAL_RANK" in os.environ:
    import convscope.image_folders as folders
    decode = folders.decode_into
    def noted(*args, **kwargs):
        with open(os.environ["DECODE_LOG"], "a") as log:
            log.write(os.environ["RANK"] + "\\n")
        return decode(*args, **kwargs)
    folders.decode_into = noted
"""


def _nproc_2_on_a_folder(tmp_path, folder, *extra):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("dark", "light"):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(40):
            pixels = rng.integers(0, 100, (10, 10)) + (150 if c == "light" else 0)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / c / f"{i}.png")
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(DECODE_SPY)
    log = tmp_path / "decodes.txt"
    env = {**os.environ, "DECODE_LOG": str(log),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(spy), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "convscope", "train", "--nproc", "2", "--data",
                           str(folder), "--size", "10", "--bs", "8", "--epochs", "1",
                           "--no-stats", "--out", str(tmp_path / "run"), *extra],
                          capture_output=True, text=True, timeout=300, env=env)
    return proc, log.read_text().split() if log.exists() else []


def test_an_image_folder_is_decoded_by_one_process_per_machine(tmp_path):
    """The first process decodes and caches the folder; the other reads that cache instead of
    decoding the same files at the same time."""
    proc, decodes = _nproc_2_on_a_folder(tmp_path, tmp_path / "tones")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert decodes == ["0"]
    assert "image cache: decoded 80 images to 10x10" in proc.stdout


def test_an_unreadable_file_stops_every_process_with_its_name(tmp_path):
    folder = tmp_path / "tones"
    (folder / "dark").mkdir(parents=True)
    (folder / "dark" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a header, then nothing
    proc, decodes = _nproc_2_on_a_folder(tmp_path, folder)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "cut.png: cannot be read" in proc.stderr and "--skip-bad" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert decodes == ["0"]  # the second process waited for the first, then stopped
