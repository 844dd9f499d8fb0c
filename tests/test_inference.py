"""Use what you trained: learn.predict on any image form, show_results, export and
load_learner (in a fresh process, no pickle), and `convscope predict`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import cli_error
from PIL import Image

from convscope.cli import main
from convscope.data import mnist
from convscope.errors import UsageError
from convscope.inference import load_learner


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run on 2,000 real MNIST digits, and three test digits saved as PNG files."""
    tmp = tmp_path_factory.mktemp("inference")
    run = tmp / "run"
    assert main(["train", "--subset", "2000", "--bs", "64", "--epochs", "1", "--no-stats",
                 "--out", str(run)]) == 0
    data = mnist()
    files = []
    for i in range(3):
        path = tmp / f"digit{i}.png"
        Image.fromarray(data.x_valid[i, 0].numpy()).save(path)
        files.append(path)
    return tmp, run, files, data


def test_predict_takes_any_image_form_and_feeds_it_as_training_did(trained):
    tmp, run, files, data = trained
    learn = load_learner(run)
    digit = data.x_valid[0]  # (1, 28, 28) uint8
    # the same digit as the model's own loader feeds it: the reference probabilities
    with torch.no_grad():
        ref = learn.model(learn.dls.train.normalize(digit[None])).softmax(1)[0]
    forms = [files[0], str(files[0]), Image.open(files[0]), digit, digit[0].numpy(),
             digit.permute(1, 2, 0).numpy(), Image.open(files[0]).convert("RGB")]
    for form in forms:
        p = learn.predict(form)
        assert p.index == int(ref.argmax()) and p.label == learn.dls.classes[p.index]
        assert torch.allclose(p.probs, ref, atol=1e-5), type(form)
    label, index, probs = learn.predict(files[0])  # unpacks as fastai's
    assert probs.shape == (10,) and abs(float(probs.sum()) - 1) < 1e-5
    # another size is squashed to the training size, as image folders are
    big = Image.open(files[0]).resize((56, 56), Image.Resampling.BILINEAR)
    assert learn.predict(big).index == int(ref.argmax())
    assert learn.predict(files[0]).note is None
    inverted = learn.predict(255 - digit)  # black on white: said, not only mispredicted
    assert "much brighter than the training images" in inverted.note
    with pytest.raises(UsageError, match="expected uint8 pixels"):
        learn.predict(np.zeros((28, 28), dtype=np.float32))
    with pytest.raises(UsageError, match="expected an image of HxW, HxWxC or CxHxW"):
        learn.predict(np.zeros((2, 2, 2, 2), dtype=np.uint8))


def test_an_export_loads_in_a_fresh_process_and_predicts_the_same(trained, tmp_path):
    tmp, run, files, _ = trained
    learn = load_learner(run)
    out = learn.export(tmp_path / "digits.safetensors")
    here = [learn.predict(f).probs.tolist() for f in files]
    code = ("import json, sys\nfrom convscope import load_learner\n"
            "learn = load_learner(sys.argv[1])\n"
            "print(json.dumps([learn.predict(f).probs.tolist() for f in sys.argv[2:]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(out), *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    there = json.loads(proc.stdout)
    assert np.allclose(there, here, atol=1e-6)
    meta = json.loads(out.read_bytes()[8:8 + int.from_bytes(out.read_bytes()[:8], "little")])[
        "__metadata__"]
    assert meta["format"] == "convscope-export" and meta["model"] == "simple_cnn"
    assert json.loads(meta["input_shape"]) == [1, 28, 28] and "convscope" in meta


def test_a_damaged_newer_or_foreign_export_is_one_error_and_runs_nothing(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    _, run, _, _ = trained
    good = run / "model.safetensors"
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UsageError, match="cannot be read"):
        load_learner(cut)
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    tensors = load_file(good)
    for change, message in (({"version": "99"}, "is newer than this convscope reads"),
                            ({"format": "pickle"}, "not a convscope export"),
                            ({"model": "os.system"}, "does not build on a file's say-so"),
                            ({"input_shape": "[1, 28]"}, "does not say how to feed")):
        path = tmp_path / "changed.safetensors"
        save_file(tensors, str(path), metadata={**meta, **change})
        with pytest.raises(UsageError, match=message):
            load_learner(path)


def test_show_results_marks_the_wrong_ones(trained):
    from convscope.config import TrainConfig
    from convscope.run import load_data, make_learner

    learn = make_learner(load_data(TrainConfig(subset=300, bs=64)), TrainConfig(
        subset=300, bs=64, stats=False), progress=False)
    learn.fit_one_cycle(1, 0.01)
    fig = learn.show_results(6)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    colours = [ax.title.get_color() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 6
    for title, colour in zip(titles, colours, strict=True):
        target, pred = title.split("/")
        assert (colour == "red") == (target != pred)
    with pytest.raises(UsageError, match="a learner from load_learner has no data"):
        load_learner(trained[1]).show_results()


def test_convscope_predict(trained, capsys):
    tmp, run, files, data = trained
    folder = tmp / "folder"
    folder.mkdir(exist_ok=True)
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    capsys.readouterr()
    assert main(["predict", str(run), str(files[0])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{files[0]}: {int(data.y_valid[0])} (")  # the digit, named
    assert main(["predict", str(run), str(folder), "--top", "3", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in rows] == [str(folder / f.name) for f in files]
    assert all(len(r["top"]) == 3 and r["top"][0]["class"] == r["class"] for r in rows)
    (folder / "broken.png").write_text("not an image")
    assert main(["predict", str(run), str(folder)]) == 2
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3  # the readable ones still predicted
    assert "broken.png: cannot be read as an image" in captured.err
    assert "1 image could not be read (above); the others were predicted" in cli_error(
        captured.err)
    assert main(["predict", str(tmp / "nothing"), str(files[0])]) == 2
    assert "no such file" in cli_error(capsys.readouterr().err)
