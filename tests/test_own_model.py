"""`--model`: the built-in models and simple_cnn's shape options, and a user's own function
(a small residual CNN, and a chain of convolutions with a pooling head) through training,
the report, compare, explore and --resume."""

import json

import pytest
from conftest import cli_error, write_idx_folder

from convscope.cli import main

MINE = '''
import torch
from torch import nn


class Residual(nn.Module):
    """A stem, one residual block (its input added back), a pooling head."""

    def __init__(self, c_in, n_classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c_in, 8, 3, stride=2, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_classes))

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.block(x))


def residual(in_channels, n_classes):
    return Residual(in_channels, n_classes)


def pooled(in_channels, n_classes):
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, n_classes))


def not_a_model(in_channels, n_classes):
    return "a string"
'''
TINY = ["--epochs", "1", "--bs", "16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two models of mine.py, each trained once on tiny digits."""
    tmp = tmp_path_factory.mktemp("own")
    (tmp / "mine.py").write_text(MINE)
    data = ["--data", str(write_idx_folder(tmp / "digits", n_train=64, n_valid=32, size=16))]
    out = {}
    for fn in ("residual", "pooled"):
        run = tmp / fn
        assert main(["train", *data, *TINY, "--model", f"{tmp / 'mine.py'}:{fn}", "--out",
                     str(run)]) == 0
        out[fn] = run
    return tmp, data, out


def test_a_user_model_trains_with_a_full_report(runs, capsys):
    tmp, _, out = runs
    for fn, run in out.items():
        config = json.loads((run / "config.json").read_text())
        assert config["model"] == f"{tmp / 'mine.py'}:{fn}" and len(config["model_sha256"]) == 64
        page = (run / "report.html").read_text()
        assert f"{tmp / 'mine.py'}:{fn}: your function (file SHA-256 " in page
        for section in ("Diagnosis", "Model summary", "Activations", "Gradients and steps",
                        "What the model gets wrong (test set)"):
            assert f"<h2>{section}</h2>" in page, (fn, section)
        assert "Linear" in page  # the summary lists the user's own layers
    # receptive fields add up only along a chain: the residual model's summary says why not
    residual = (out["residual"] / "report.html").read_text()
    assert "No receptive fields" not in (out["pooled"] / "report.html").read_text()
    assert "no receptive fields: receptive fields add up layer by layer along a chain" in \
        residual and "reads a tensor that layer" in residual
    capsys.readouterr()
    assert main(["compare", str(out["residual"]), str(out["pooled"]), "--out",
                 str(tmp / "cmp.html")]) == 0
    assert "model" in (tmp / "cmp.html").read_text()


def test_explore_runs_a_user_model_only_when_named_and_only_a_chain(runs, capsys):
    tmp, _, out = runs
    mine = tmp / "mine.py"
    assert main(["explore", str(out["pooled"])]) == 2
    assert f"explore runs it only when you name it: add --model {mine}:pooled" in \
        cli_error(capsys.readouterr().err)
    assert main(["explore", str(out["pooled"]), "--model", f"{mine}:pooled"]) == 0
    assert (out["pooled"] / "explore.html").is_file()
    capsys.readouterr()
    assert main(["explore", str(out["residual"]), "--model", f"{mine}:residual"]) == 2
    assert "explore traces receptive fields through a chain of convolutions, and this model " \
           "is not one" in cli_error(capsys.readouterr().err)
    assert main(["explore", str(out["pooled"]), "--model", f"{mine}:residual"]) == 2
    assert "is not the model the run recorded" in cli_error(capsys.readouterr().err)


def test_resume_refuses_a_model_file_that_changed(runs, tmp_path, capsys):
    import shutil

    tmp, _, out = runs
    copy = tmp_path / "copy"
    mine = tmp_path / "mine.py"
    mine.write_text(MINE)
    shutil.copytree(out["pooled"], copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"] = f"{mine}:pooled"
    (copy / "config.json").write_text(json.dumps(config))
    (copy / "report.html").unlink()  # unfinished: --resume would write the outputs
    mine.write_text(MINE + "\n# edited\n")
    assert main(["train", "--resume", str(copy)]) == 2
    assert f"the model file {str(mine)!r} changed since the run was trained" in cli_error(
        capsys.readouterr().err)
    mine.unlink()
    assert main(["train", "--resume", str(copy)]) == 2
    assert "is gone" in cli_error(capsys.readouterr().err)


def test_built_in_models_and_simple_cnn_shapes(runs, tmp_path, capsys):
    tmp, data, _ = runs
    run = tmp_path / "narrow"
    assert main(["train", *data, *TINY, "--widths", "4,8", "--first-ks", "3", "--out",
                 str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "widths 4-8-10, stride 2, a 3x3 first kernel" in page
    first = tmp_path / "first"
    assert main(["train", *data, *TINY, "--model", "book_first", "--out", str(first)]) == 0
    config = json.loads((first / "config.json").read_text())
    assert config["model"] == "book_first" and config["bn"] is False
    assert "conv -&gt; ReLU (no batchnorm), widths 4-8-16-32-10" in (first / "report.html") \
        .read_text()


@pytest.mark.parametrize("args,expected", [
    (["--model", "book_first", "--widths", "4,8"], "--widths and --first-ks shape simple_cnn"),
    (["--model", "nofile.py:net"], "--model: cannot read 'nofile.py'"),
    (["--model", "mine.py:missing"], "has no function 'missing'"),
    (["--model", "mine.py:not_a_model"], "expected the function to return an nn.Module, "
                                         "received str"),
    (["--model", "resnet50"], "--model: expected simple_cnn, book_first, or FILE.py:FUNCTION"),
    (["--widths", "8,x"], "--widths: expected whole numbers > 0 separated by commas"),
    (["--first-ks", "4"], "--first-ks: expected an odd integer >= 1, received '4'"),
])
def test_bad_models_are_one_line(runs, tmp_path, capsys, monkeypatch, args, expected):
    tmp, data, _ = runs
    monkeypatch.chdir(tmp)
    assert main(["train", *data, *TINY, *args, "--out", str(tmp_path / "run")]) == 2
    assert expected in cli_error(capsys.readouterr().err)
    assert not (tmp_path / "run" / "config.json").exists()
