"""convscope compare and convscope chapter: runs side by side, in a real browser."""

import json
import os

import pytest
from browser import check_page, find_chromium
from conftest import cli_error
from eye import check_drawn_figures, look
from safetensors.torch import load_file, save_file

from convscope.cli import main
from convscope.compare import (
    PLAIN,
    compare,
    differing_settings,
    final_metrics,
    load_runs,
    names_of,
)

needs_browser = pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"),
                                   reason="no chromium on PATH (CI installs it)")
QUICK = ["--subset", "640", "--bs", "64", "--epochs", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    good, bad, plain = tmp / "good", tmp / "bad", tmp / "plain"
    assert main(["train", *QUICK, "--tta", "--out", str(good)]) == 0
    assert main(["train", *QUICK, "--tta", "--no-bn", "--schedule", "constant", "--lr",
                 "0.06", "--out", str(bad)]) == 0
    assert main(["train", *QUICK, "--no-stats", "--no-tta", "--out", str(plain)]) == 0
    return good, bad, plain


def test_settings_that_differ_and_the_best_marked(runs):
    good, bad, _ = runs
    loaded = load_runs([good, bad])
    names = names_of(loaded)
    rows = {r["setting"]: r for r in differing_settings(loaded, names)}
    assert set(rows) == {"learning rate", "schedule", "batchnorm"}
    assert rows["batchnorm"] == {"setting": "batchnorm", "good": "yes", "bad": "no"}
    page = compare([good, bad])
    assert "<h2>Settings that differ</h2>" in page and "run folder" not in page
    assert page.count(" *</td>") >= 2  # the good run's accuracy and valid loss are the best


def test_final_metrics_give_each_run_s_result_and_the_plain_accuracy_beside(runs):
    good, _, plain = runs
    loaded = load_runs([good, plain])
    rows = final_metrics(loaded, names_of(loaded))
    meta = json.loads((good / "history.json").read_text())["meta"]
    result = loaded[0].result
    assert result.accuracy == meta["tta"].get("accuracy", result.plain)
    assert rows[0]["accuracy"].split(" ")[0] == f"{result.accuracy:.2%}"
    assert rows[1]["measured"] == "plain"
    if result.augmented:
        assert rows[0][PLAIN].split(" ")[0] == f"{result.plain:.2%}"
    assert "epochs" in rows[0] and PLAIN not in final_metrics(loaded[1:], names_of(loaded[1:]))[0]


def test_overlays_and_side_by_side_layers_from_saved_files(runs, tmp_path):
    good, bad, plain = runs
    page = compare([good, bad, plain])
    assert 'alt="overlaid curves"' in page
    assert page.count("color_dim side by side") == 5  # modules 0-4, paired by name
    assert "(only in good, bad; not in plain)" in page  # plain recorded no activations
    assert page.count("<h3>good</h3>") == page.count("<h3>bad</h3>") == 1  # its diagnosis
    assert "is at chance level" in page  # the bad run's verdict, beside the good one's


@needs_browser
def test_compare_page_in_a_real_browser(runs, tmp_path, capsys):
    good, bad, _ = runs
    out = tmp_path / "compare.html"
    assert main(["compare", str(good), str(bad), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    result = check_page(out, tmp_path / "compare.png")
    assert result.console_errors == [] and result.exceptions == []
    assert len(result.images) >= 1 + 1 + 5 and result.broken_images == []
    page = out.read_text()
    assert "<script" not in page and 'src="http' not in page


@needs_browser
def test_the_compare_page_as_the_eye_reads_it(runs, tmp_path, monkeypatch):
    """Every figure passes the eye check (tests/eye.py) and names the runs; each block's
    figure sits under its heading; the tables say what each run recorded."""
    good, bad, _ = runs
    drawn = check_drawn_figures(monkeypatch)
    page = tmp_path / "compare.html"
    assert main(["compare", str(good), str(bad), "--out", str(page)]) == 0
    seen = look(page, tmp_path / "compare.png")
    loaded = load_runs([good, bad])
    assert len(drawn) == 1 + 1 + 5
    for text in drawn:  # every figure says which run each panel or line is
        assert "good" in text and "bad" in text
    for el in seen["shown"]:
        if el["alt"].endswith("color_dim side by side"):
            assert el["heading"] == f"Block {el['alt'].split()[1]}", el
    text = seen["text"]
    for run in loaded:
        name, result = run.path.name, run.result
        row = next(line for line in text.splitlines() if line.startswith(f"{name}\t"))
        assert row.split("\t")[2].split(" ")[0] == f"{result.accuracy:.2%}", row
        assert row.split("\t")[1] == str(len(run.values))
    assert "batchnorm\tyes\tno" in text and "schedule\tone_cycle\tconstant" in text
    assert seen["headings"][-2:] == ["good", "bad"]  # each run's diagnosis


def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys):
    good, bad, _ = runs
    assert main(["compare", str(good)]) == 2
    assert "compare needs at least two run folders, received 1" in cli_error(
        capsys.readouterr().err)
    assert main(["compare", str(good), str(tmp_path)]) == 2
    assert f"{tmp_path} cannot be compared" in cli_error(capsys.readouterr().err)
    old = tmp_path / "old"
    old.mkdir()
    for p in bad.iterdir():
        (old / p.name).write_bytes(p.read_bytes())
    tensors = load_file(old / "activation_stats.safetensors")  # as an older format wrote it
    save_file(tensors, str(old / "activation_stats.safetensors"),
              metadata={"format": "convscope.activation_stats/0"})
    assert main(["compare", str(good), str(old)]) == 2
    line = cli_error(capsys.readouterr().err)
    assert "cannot be compared" in line and "convscope.activation_stats/0" in line


@needs_browser
def test_chapter_replays_end_to_end_on_a_subset(tmp_path, capsys):
    out = tmp_path / "chapter"
    assert main(["chapter", "--subset", "1000", "--out", str(out)]) == 0
    assert f"wrote {out / 'chapter.html'}" in capsys.readouterr().out
    steps = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert steps == ["1-no-bn-bs64", "2-no-bn-bs512", "3-no-bn-1cycle", "4-bn-1cycle",
                     "5-bn-1cycle-5ep"]
    for step in steps:  # each a normal run folder, trained as the book trains
        assert (out / step / "report.html").is_file()
        config = json.loads((out / step / "config.json").read_text())
        assert config["hard"] == 1.0 and config["tta"] is False
    history = json.loads((out / "5-bn-1cycle-5ep" / "history.json").read_text())
    assert history["epoch_ends"] == [2, 4, 6, 8, 10]  # 1,000 images in 2 batches, every epoch
    page = (out / "chapter.html").read_text()
    assert "11.35%" in page and "99.12% / 99.21%" in page  # the book's numbers beside ours
    assert "on 1,000 training images" in page
    # each step says what the book saw and what this run saw, and a subset too small to
    # show a step's effect says so, and how many images would
    assert page.count("What the book saw:") == page.count("What this run saw:") == 5
    assert "steps 3, 4, 5 need more to show the book&#x27;s effect" in page
    assert "it needs about 20,000 images to" in page or "it needs about 20,000 to" in page
    result = check_page(out / "chapter.html", tmp_path / "chapter.png")
    assert result.console_errors == [] and result.broken_images == []
    assert len(result.images) >= 6
    # a second replay does not overwrite the first behind the user's back
    assert main(["chapter", "--subset", "1000", "--out", str(out)]) == 2
    line = cli_error(capsys.readouterr().err)
    assert "holds an earlier replay (1-no-bn-bs64, " in line
    assert f"`convscope chapter --out {out} --overwrite` replays it again" in line


def test_a_step_that_fails_is_shown_and_the_others_run(tmp_path, monkeypatch):
    from convscope import chapter
    from convscope.errors import TrainingDivergedError
    from convscope.run import train

    real = train.run_training

    def first_diverges(cfg, **kw):
        if cfg.out.endswith("1-no-bn-bs64"):
            raise TrainingDivergedError("Training diverged at epoch 0, batch 3: ...", 0, 3, 0.06)
        return real(cfg, **kw)

    monkeypatch.setattr(train, "run_training", first_diverges)
    monkeypatch.setattr(chapter, "STEPS", chapter.STEPS[:2])
    page = chapter.run_chapter(tmp_path / "ch", subset=500, log=lambda *a: None)
    text = page.read_text()
    assert "This step diverged:</b> Training diverged at epoch 0, batch 3" in text
    assert ">diverged<" in text  # its row in the table
    assert (tmp_path / "ch" / "2-no-bn-bs512" / "report.html").is_file()


@pytest.mark.parametrize("step, subset, accuracy, says", [
    (2, 6000, 0.1135, "At 6,000 images this step stays at chance; it needs about 50,000 images "
                      "to train as in the book. Run `convscope chapter` without --subset (or "
                      "with --subset 50000) to see it"),
    (3, 6000, 0.7945, "79.45% test accuracy, where the book printed 98.64%: much lower. At "
                      "6,000 images this step trains, but it needs about 20,000 to come "
                      "within 2 points of the book's accuracy"),
    (0, 20000, 0.8203, "At 20,000 images this step trained, where the book's stayed at chance: "
                       "a constant high learning rate does not kill the ReLUs in every draw of "
                       "images, and replays stayed at chance as the book's did from about "
                       "30,000 images up"),
    (4, 6000, 0.9752, "97.52% test accuracy, where the book printed 99.12% / 99.21%: in line "
                      "with the book."),
    (1, 2000, 0.0902, "9.02% test accuracy, where the book printed 11.35%: in line with the "
                      "book."),  # at chance as the book's was
    (3, None, 0.9502, "much lower than the book's, on the same 60,000 images"),
    (3, 30000, 0.9502, "much lower than the book's, though replays of 30,000 images were in "
                       "line with it when measured"),
])
def test_a_step_too_small_to_show_the_book_s_effect_says_how_many_images_would(
        step, subset, accuracy, says):
    """The measured thresholds (chapter.STEPS' `needs`) in the step's words: what the run
    saw, and the images the step needs to show what the book's showed."""
    from pathlib import Path

    from convscope.chapter import STEPS, Outcome, seen

    assert says in seen(Outcome(STEPS[step], Path("x"), accuracy), subset)


def test_the_terminal_and_the_page_say_a_step_needs_more_images(tmp_path, monkeypatch,
                                                                  capsys):
    """Steps 3 and 5 on 500 images: step 3 (one step of 1cycle) stays at chance, as it did
    on 6,000, and says how many images would train it; each step's log and its epoch table
    alike are indented under `step NAME: ...`."""
    from convscope import chapter

    monkeypatch.setattr(chapter, "STEPS", [chapter.STEPS[2], chapter.STEPS[4]])
    page = chapter.run_chapter(tmp_path / "ch", subset=500).read_text()
    said = "At 500 images this step stays at chance; it needs about 50,000 images to train"
    out = capsys.readouterr().out
    step3, step5 = out.split("\nstep 5-bn-1cycle-5ep: ")
    assert step3.startswith("step 3-no-bn-1cycle: ")
    line = step3.splitlines()[-1]
    assert line.startswith("  against the book: ") and said in line
    assert said in page and "much lower than the book&#x27;s: too few images (about 50,000 " \
        "needed)" in page and "steps 3, 5 need more to show the book&#x27;s effect" in page
    body = step5.splitlines()[1:]
    assert [line for line in body if not line.startswith("  ")] == []
    table = [line.split() for line in body if line.split()[0] in "epoch 0 1 2 3 4".split()]
    assert [row[0] for row in table] == ["epoch", "0", "1", "2", "3", "4"]


@needs_browser
def test_the_chapter_page_as_the_eye_reads_it(runs, tmp_path, monkeypatch):
    """Every figure passes the eye check (tests/eye.py) and draws the block its step's
    heading and its alt name; the table and each step's words give the run's accuracy.
    The page of the chapter's first two steps, drawn from this module's runs (640 images)."""
    from convscope.chapter import STEPS, Outcome, render
    from convscope.run_folder import load_run

    outcomes = [Outcome(step, run, load_run(run).result.accuracy)
                for step, run in zip(STEPS[:2], runs[1::-1], strict=True)]
    drawn = check_drawn_figures(monkeypatch)
    page = tmp_path / "chapter.html"
    page.write_text(render(outcomes, 640))
    seen = look(page, tmp_path / "chapter.png")
    images = [el for el in seen["shown"] if el["tag"] == "img"]
    assert len(images) == len(drawn) == 3  # step 1 draws two blocks, step 2 one
    for el, text in zip(images, drawn, strict=True):
        step, _, block = el["alt"].split()[:3]
        assert el["heading"].startswith(f"{step}: ") and f"block {block}:" in text, (el, text)
    text = seen["text"]
    assert "on 640 training images" in text
    for o in outcomes:
        accuracy = f"{o.accuracy:.2%}"
        row = next(line for line in text.splitlines() if line.startswith(f"{o.step.name}\t"))
        assert row.split("\t")[3] == accuracy, row
        said = text.split(f"{o.step.name}: {o.step.what}")[1].split("What this run saw: ")[1]
        assert said.startswith(f"{accuracy} test accuracy, where the book printed 11.35%")
        assert f"Run folder: {o.run_dir}" in text


def test_curves_line_up_on_epochs_and_the_page_is_html(runs, tmp_path, capsys):
    """Runs of other batch sizes or epoch lengths share one axis of epochs; the accuracy axis
    holds the data (one epoch's point too); a page asked for as .png is refused."""
    from convscope.callbacks.recorder import History
    from convscope.plots import compare_curves, in_epochs

    short = History([1.0] * 6, [1.0] * 6, {"lr": [[0.1]] * 6, "mom": [[0.9]] * 6},
                    [{"valid_loss": 1.0, "accuracy": 0.9612}], epoch_ends=[6])
    long = History([1.0] * 30, [1.0] * 30, {"lr": [[0.1]] * 30, "mom": [[0.9]] * 30},
                   [{"valid_loss": 1.0, "accuracy": 0.97}, {"valid_loss": 0.9, "accuracy": 0.98}],
                   epoch_ends=[20, 30])
    assert in_epochs(short)[-1] == 1.0 and in_epochs(long)[19] == 1.0
    assert in_epochs(long)[-1] == 2.0 and in_epochs(long)[20] == pytest.approx(1.1)
    fig = compare_curves([short, long], ["a", "b"])
    loss_ax, acc_ax = fig.axes[0], fig.axes[1]
    assert max(max(line.get_xdata()) for line in loss_ax.lines) == 2.0
    lo, hi = acc_ax.get_ylim()
    assert lo <= 96.12 and hi >= 98 and hi <= 100 and lo >= 90
    one = compare_curves([short], ["a"]).axes[1].get_ylim()
    assert one[0] < 96.12 < one[1] and one[0] > 90
    # a run's learning rates 100x another's: a log axis, or the lower run's lies flat at 0
    hot = History([1.0] * 6, [1.0] * 6, {"lr": [[10.0]] * 6, "mom": [[0.9]] * 6},
                  [{"valid_loss": 1.0, "accuracy": 0.5}], epoch_ends=[6])
    assert compare_curves([short, hot], ["a", "hot"]).axes[2].get_yscale() == "log"
    assert fig.axes[2].get_yscale() == "linear"
    good, bad, _ = runs
    assert main(["compare", str(good), str(bad), "--out", str(tmp_path / "cmp.png")]) == 2
    assert "expected a .html file, received" in cli_error(capsys.readouterr().err)
    assert not (tmp_path / "cmp.png").exists()
