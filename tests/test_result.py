"""One accuracy everywhere: the run's result is the same number in metrics.csv, history.json,
the command's last lines, the report's headline and compare; test-time augmentation is shown
beside the plain accuracy, skipped (with a line) where the model is unsure of most images,
and named when it lowered the accuracy."""

import csv
import json
import math

import pytest
from conftest import write_idx_folder

from convscope.compare import final_metrics
from convscope.config import TrainConfig
from convscope.result import Result
from convscope.run import run_training
from convscope.run_folder import load_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same small run with and without test-time augmentation, and one whose model has
    learned nothing (a learning rate too small to move it), each with its printed lines."""
    root = tmp_path_factory.mktemp("result")
    data = write_idx_folder(root / "data", n_train=256, n_valid=60, size=16)
    out = {}
    for name, extra in (("tta", {"tta": True}), ("plain", {"tta": False}),
                        ("untrained", {"tta": True, "lr": 1e-9, "epochs": 1})):
        lines: list[str] = []
        settings = {"epochs": 2, "bs": 32, **extra}
        cfg = TrainConfig(data=str(data), out=str(root / name), stats=False, **settings)
        result = run_training(cfg, log=lines.append)
        out[name] = (root / name, result, lines)
    return out


def metrics_rows(run_dir):
    return list(csv.DictReader((run_dir / "metrics.csv").open()))


def headline(run_dir) -> str:
    page = (run_dir / "report.html").read_text()
    return page.split("<p class='result'>")[1].split("</p>")[0]


def test_with_augmentation_every_place_shows_the_same_result_and_the_plain_beside(runs):
    run_dir, result, lines = runs["tta"]
    rows = metrics_rows(run_dir)
    plain = float(rows[-1]["accuracy"])
    assert float(rows[-1]["accuracy_tta"]) == pytest.approx(result.accuracy)
    assert [r["accuracy_tta"] for r in rows[:-1]] == [""]  # only the last row holds it
    meta = json.loads((run_dir / "history.json").read_text())["meta"]
    assert meta["tta"]["accuracy"] == pytest.approx(result.accuracy)
    said = next(x for x in lines if x.startswith("test accuracy"))
    shown = f"test accuracy {result.accuracy:.2%} after 2 epochs"
    assert said.startswith(shown + " (") and "s of training), with test-time augmentation" \
        in said
    assert f"{plain:.2%} plain" in said or f"LOWERED it from {plain:.2%} plain" in said
    looked = meta["tta"]["looked_at"]
    assert 0 < looked <= 60 and f"the {looked:,} images with top probability under 0.9" in said
    assert headline(run_dir).startswith(shown + ", with test-time augmentation")
    loaded = load_run(run_dir).result
    assert loaded.accuracy == pytest.approx(result.accuracy) and loaded.plain == plain
    row = final_metrics([load_run(run_dir), load_run(runs["plain"][0])], ["a", "b"])[0]
    assert row["accuracy"].split()[0] == f"{result.accuracy:.2%}"
    assert row["plain accuracy"].split()[0] == f"{plain:.2%}"
    assert row["measured"] == "with test-time augmentation"


def test_without_augmentation_the_result_is_the_last_epoch_plain_accuracy(runs):
    run_dir, result, lines = runs["plain"]
    rows = metrics_rows(run_dir)
    assert "accuracy_tta" not in rows[-1]
    assert float(rows[-1]["accuracy"]) == pytest.approx(result.accuracy)
    said = next(x for x in lines if x.startswith("test accuracy"))
    assert said.startswith(f"test accuracy {result.accuracy:.2%} after 2 epochs (")
    assert "augmentation" not in said and "augmentation" not in headline(run_dir)
    assert "tta" not in json.loads((run_dir / "history.json").read_text())["meta"]


def test_augmentation_is_skipped_with_a_line_when_the_model_is_unsure_of_most_images(runs):
    run_dir, result, lines = runs["untrained"]
    said = next(x for x in lines if x.startswith("test accuracy"))
    assert "test-time augmentation skipped: the model was unsure (top probability under 0.9)" \
        in said and "of the test images, and augmentation only adds cost there" in said
    rows = metrics_rows(run_dir)
    assert "accuracy_tta" not in rows[-1]
    assert float(rows[-1]["accuracy"]) == pytest.approx(result.accuracy)
    assert "skipped" in headline(run_dir)
    page = (run_dir / "report.html").read_text()
    assert "yes (the recipe&#x27;s: no) (and skipped: see the result above)" in page


def test_a_result_that_augmentation_lowered_says_so():
    tta = {"accuracy": 0.9826, "looked_at": 120, "unsure_below": 0.9, "seconds": 0.1}
    r = Result.of([{"accuracy": 0.9895}], {"held_out": "valid", "tta": tta})
    assert r.accuracy == 0.9826 and r.plain == 0.9895
    assert r.line(3) == ("valid accuracy 98.26% after 3 epochs, with test-time augmentation "
                         "(the 120 images with top probability under 0.9 averaged with their "
                         "four 1-pixel shifts), which LOWERED it from 98.95% plain")
    assert math.isnan(Result.of([], {}).accuracy) and Result.of([], {}).line(0) == \
        "no epoch finished"
