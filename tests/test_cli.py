import csv
import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import cli_error, write_idx_folder
from safetensors.torch import load_file

from convscope.cli import main
from convscope.models import simple_cnn


@pytest.mark.parametrize("args,message", [
    (["train", "--epochs", "-1"], "--epochs: expected an integer >= 0, received '-1'"),
    (["train", "--epochs", "two"], "--epochs: expected an integer >= 0, received 'two'"),
    (["train", "--lr", "0"], "--lr: expected a number > 0 and <= 1000, received '0'"),
    (["train", "--lr=-3e-3"], "--lr: expected a number > 0 and <= 1000, received '-3e-3'"),
    (["train", "--lr", "nan"], "--lr: expected a number > 0 and <= 1000, received 'nan'"),
    (["train", "--recipe", "slow"], "--recipe: invalid choice: 'slow' (choose from"),
    (["train", "--bs", "0"], "--bs: expected an integer >= 1, received '0'"),
    (["train", "--seed", "-2"], "--seed: expected an integer from 0 to 9223372036854775807, "
                                "received '-2'"),
    (["train", "--subset", "0"], "--subset: expected an integer >= 1, received '0'"),
    (["train", "--valid-pct", "1.5"], "--valid-pct: expected a number between 0 and 1"),
    (["train", "--hard", "0"], "--hard: expected a number in (0, 1], received '0'"),
    (["train", "--hard", "1.5"], "--hard: expected a number in (0, 1], received '1.5'"),
    (["train", "--device", "tpu"], "--device: expected cpu, cuda or cuda:N, received 'tpu'"),
    (["train", "--size", "0"], "--size: expected an integer >= 1, received '0'"),
    (["train", "--nproc", "0"], "--nproc: expected an integer >= 1, received '0'"),
    (["train", "--checkpoint-every", "-1"], "--checkpoint-every: expected an integer >= 1"),
    (["train", "--precision", "fp64"], "--precision: invalid choice: 'fp64'"),
    (["train", "--resume"], "--resume: expected one argument"),
    (["lr-find", "--num-it", "1"], "--num-it: expected an integer >= 2, received 1"),
    (["lr-find", "--end-lr", "0"], "--end-lr: expected a number > 0, received '0'"),
    (["lr-find", "--bs", "x"], "--bs: expected an integer >= 1, received 'x'"),
    (["kernel", "--index", "70000"], "--index: MNIST has 60000 training digits"),
    (["kernel", "--index", "-1"], "--index: expected an integer >= 0, received '-1'"),
    (["conv-matrix", "--size", "0"], "--size: expected an integer >= 1, received '0'"),
    (["conv-matrix", "--padding", "-1"], "--padding: expected an integer >= 0"),
    (["conv-matrix", "--size", "64"], "too big to draw"),
    (["report"], "the following arguments are required: RUN_DIR"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_arguments_get_one_line_and_exit_2(capsys, args, message):
    assert main(args) == 2
    assert message in cli_error(capsys.readouterr().err)


def test_missing_data_folder_lists_the_missing_files(capsys, tmp_path):
    folder = write_idx_folder(tmp_path / "d")
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "lacks train-labels-idx1-ubyte, t10k-images-idx3-ubyte" in err
    assert not (tmp_path / "run").exists()  # nothing written for a refused run
    assert main(["train", "--data", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_corrupt_data_file_is_named(capsys, tmp_path):
    folder = write_idx_folder(tmp_path / "d")
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage")
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run")]) == 2
    assert "t10k-images-idx3-ubyte.gz" in cli_error(capsys.readouterr().err)


def test_installed_command_exits_cleanly_on_bad_input():
    exe = [sys.executable, "-m", "convscope"]
    proc = subprocess.run([*exe, "train", "--epochs", "-5"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("expected an integer >= 0, received '-5'")
    assert "Traceback" not in proc.stderr
    helped = subprocess.run([*exe, "train", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--epochs" in helped.stdout


def test_train_on_an_idx_folder_writes_the_run_folder(tmp_path, capsys):
    folder = write_idx_folder(tmp_path / "d", n_train=64, n_valid=32, gz=False)
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--epochs", "2", "--bs", "16",
                 "--out", str(run)]) == 0
    for name in ("config.json", "metrics.csv", "model.safetensors", "show_batch.png",
                 "loss.png", "sched.png"):
        assert (run / name).stat().st_size > 0, name
    assert json.loads((run / "config.json").read_text())["bs"] == 16
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert "test accuracy " in capsys.readouterr().out


def test_end_to_end_real_mnist_subset(tmp_path, capsys):
    """One epoch on 4,000 real MNIST digits, evaluated on the full 10,000 test set."""
    run = tmp_path / "run"
    assert main(["train", "--subset", "4000", "--bs", "64", "--epochs", "1", "--seed", "1",
                 "--out", str(run)]) == 0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    accuracy = float(rows[-1]["accuracy"])
    assert accuracy >= 0.90, f"accuracy {accuracy:.3f} after one epoch on 4,000 digits"
    out = capsys.readouterr().out
    # the book recipe evaluates plainly: the line shows metrics.csv's accuracy
    assert f"test accuracy {accuracy:.2%} after 1 epoch (" in out
    assert "augmentation" not in out
    # 63 steps, 10,000 test images, one batch in four recorded: judged, and healthy
    assert "diagnosis: [info] The run looks healthy" in out and "[warning]" not in out

    # the saved weights and normalisation load back and give the same accuracy
    from safetensors import safe_open

    from convscope.data import DataLoaders, mnist

    model = simple_cnn()
    model.load_state_dict(load_file(run / "model.safetensors"))
    model.eval()
    with safe_open(run / "model.safetensors", "pt") as f:
        meta = f.metadata()
    stats = torch.tensor(json.loads(meta["mean"])), torch.tensor(json.loads(meta["std"]))
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
    dls = DataLoaders.from_data(mnist(), bs=1000, stats=stats)
    with torch.inference_mode():
        correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in dls.valid)
    assert correct / 10000 == pytest.approx(accuracy, abs=1e-4)


def test_kernel_command_on_mnist_and_colour_images(tmp_path, capsys):
    from PIL import Image

    assert main(["kernel", "--kernel", "left_edge", "--out", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "left_edge.png").stat().st_size > 0
    assert (tmp_path / "k" / "kernels.png").stat().st_size > 0
    assert "MNIST training digit 0 (a 5) (1x28x28)" in capsys.readouterr().out
    rgba = tmp_path / "c.png"
    Image.new("RGBA", (20, 12), (200, 30, 30, 128)).save(rgba)
    assert main(["kernel", str(rgba), "--out", str(tmp_path / "c")]) == 0
    assert "(3x12x20)" in capsys.readouterr().out
    assert main(["kernel", "--kernel", "blur"]) == 2
    assert "Choose one of ['bottom_edge'" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    assert main(["kernel", str(tmp_path / "bad.png"), "--out", str(tmp_path / "b")]) == 2
    assert "bad.png: cannot be read as an image" in capsys.readouterr().err


def test_conv_matrix_command(tmp_path, capsys):
    out = tmp_path / "m.png"
    assert main(["conv-matrix", "--size", "5", "--kernel", "3", "--stride", "2",
                 "--padding", "1", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "W: 9 x 25 (3x3 outputs, 5x5 inputs)" in capsys.readouterr().out
    assert main(["conv-matrix", "--size", "2", "--kernel", "5", "--out", str(out)]) == 2
    assert "--kernel 5 does not fit a 2x2 image" in capsys.readouterr().err


def test_summary_command(capsys):
    assert main(["summary", "--model", "book_first"]) == 0
    out = capsys.readouterr().out
    assert "total params: 6,722" in out and "18,432" in out
    assert main(["summary", "--input", "3x32x32"]) == 0
    assert "input: 3 x 32 x 32" in capsys.readouterr().out
    assert main(["summary", "--input", "3x32"]) == 2
    assert "expected CxHxW" in capsys.readouterr().err
    assert main(["summary", "--model", "resnet"]) == 2
    assert "--model: expected simple_cnn, book_first, or FILE.py:FUNCTION, received " \
        "'resnet'" in capsys.readouterr().err


def test_help_does_not_import_torch():
    """`convscope --help` answers without loading torch or matplotlib (they take seconds)."""
    code = ("import sys\nfrom convscope.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip().endswith("[]"), proc.stdout + proc.stderr


def test_train_reaches_its_first_batch_without_matplotlib_or_dynamo(tmp_path):
    """Drawing and the report come after training; torch._dynamo is never needed."""
    code = f"""
import os, sys
from convscope import learner
from convscope.cli import main

class Look(learner.Callback):
    def before_batch(self):
        print(sorted(m for m in ('matplotlib', 'torch._dynamo') if m in sys.modules), flush=True)
        os._exit(0)

original = learner.Learner.__init__
def patched(self, *a, **k):
    original(self, *a, **k)
    self.add_cb(Look())
learner.Learner.__init__ = patched
main(["train", "--subset", "512", "--out", {str(tmp_path / "run")!r}])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip().endswith("[]"), proc.stdout + proc.stderr


def test_progress_bar_on_a_terminal(tmp_path):
    """On a terminal the live bar runs (rich) and the table rows still print above it."""
    import os
    import pty
    import select

    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "convscope", "train", "--subset", "640",
                             "--bs", "64", "--epochs", "2", "--no-stats", "--out",
                             str(tmp_path / "run")], stdout=secondary, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        ready, _, _ = select.select([primary], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(primary, 65536)
        except OSError:  # the terminal closed when the process ended
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    assert "train 0" in out and "valid 1" in out  # the bar's task names
    rows = [ln for ln in out.replace("\r", "\n").splitlines() if ln.startswith(("0  ", "1  "))]
    assert len(rows) == 2 and rows[-1].split()[-1].endswith("s")
