"""What only a GPU can check: training, resuming, lr_find, mixed precision and nccl on CUDA.

Skipped on a machine without CUDA (the project's own has none). A session with a GPU runs
`.venv/bin/python -m pytest tests/test_cuda.py tests/test_mixed_precision.py -v`; the nccl test
needs two GPUs (nccl will not put two processes on one).
"""

import copy
import csv
import subprocess
import sys

import pytest
import torch
from conftest import StopAt, stripes

from convscope.callbacks import ActivationStats, CheckpointCallback, MixedPrecision
from convscope.cli import main
from convscope.data import DataLoaders
from convscope.learner import Learner
from convscope.models import simple_cnn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def learner(cbs=()) -> Learner:
    torch.manual_seed(0)
    dls = DataLoaders.from_data(stripes(512, 64), bs=32, seed=0, device="cuda")
    return Learner(dls, simple_cnn(n_classes=4), cbs=list(cbs), progress=False)


def test_cli_trains_real_mnist_on_cuda(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--device", "cuda", "--subset", "4000", "--bs", "64", "--epochs", "1",
                 "--seed", "1", "--out", str(run)]) == 0
    accuracy = float(list(csv.DictReader((run / "metrics.csv").open()))[-1]["accuracy"])
    assert accuracy >= 0.90
    assert (run / "report.html").is_file() and (run / "activation_stats.safetensors").is_file()
    assert f"test accuracy {accuracy:.2%}" in capsys.readouterr().out


def test_everything_stays_on_the_gpu():
    stats = ActivationStats()
    learn = learner([stats])
    learn.fit_one_cycle(2, 1e-2)
    assert all(p.device.type == "cuda" for p in learn.model.parameters())
    assert all(v.device.type == "cuda" for s in learn.opt.state.values()
               for v in s.values() if torch.is_tensor(v) and v.ndim > 0)
    assert learn.recorder.values[-1]["accuracy"] > 0.9
    assert all(torch.isfinite(s).all() for s in stats.stats)


def test_resume_on_cuda_continues_the_run(tmp_path, monkeypatch):
    # cuDNN's default kernels need not repeat bit for bit, and two epochs amplify the
    # difference past any tolerance now and then: resume is compared on deterministic ones
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    ref = learner([CheckpointCallback(tmp_path / "ref.safetensors", every_batches=4)])
    ref.fit_one_cycle(2, 1e-2)

    ck = tmp_path / "c.safetensors"
    learner([CheckpointCallback(ck, every_batches=4), StopAt(1, 5)]).fit_one_cycle(2, 1e-2)
    resumed = learner([CheckpointCallback(ck, every_batches=4)])
    resumed.fit_one_cycle(2, 1e-2, resume=ck)
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values(),
                         strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-3, atol=1e-4, msg=k)


def test_lr_find_on_cuda_leaves_no_trace():
    learn = learner()
    learn.fit(1, lr=1e-3)
    model = copy.deepcopy(learn.model.state_dict())
    cuda_rng = torch.cuda.get_rng_state()
    learn.lr_find(num_it=30)
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, model[k]), k
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)


def test_bf16_on_cuda():
    learn = learner([MixedPrecision("bf16")])
    learn.fit(2, lr=1e-2)
    assert learn.recorder.values[-1]["accuracy"] > 0.9


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl needs a GPU per process")
def test_nccl_on_two_gpus_with_sync_bn(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "convscope", "train", "--nproc", "2",
                           "--device", "cuda", "--sync-bn", "--subset", "4096", "--bs", "64",
                           "--epochs", "1", "--no-stats", "--out", str(run)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed: 2 processes" in proc.stdout
    assert proc.stdout.count("test accuracy ") == 1
    for name in ("model.safetensors", "metrics.csv", "checkpoint.safetensors"):
        assert (run / name).is_file(), name
