import os
import re
import shutil

import pytest
from browser import check_page, find_chromium
from conftest import write_idx_folder
from eye import check_drawn_figures, look

from convscope import run_folder
from convscope.cli import main
from convscope.report import build_report
from convscope.run_folder import load_run

# CI installs Debian's chromium (.ci/run): there a missing browser is a failure, not a skip.
needs_browser = pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"),
                                   reason="no chromium on PATH (CI installs it)")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    data = write_idx_folder(tmp / "data", n_train=96, n_valid=48)
    run = tmp / "run"
    assert main(["train", "--recipe", "fast", "--data", str(data), "--epochs", "2", "--bs",
                 "16", "--out", str(run)]) == 0
    return run


def test_run_folder_has_report_and_saved_data(run_dir):
    for name in ("report.html", "history.json", "activation_stats.safetensors"):
        assert (run_dir / name).stat().st_size > 0
    run = load_run(run_dir)
    # 6 batches of 16 in epoch 0, 2 in epoch 1 (the fast recipe's hardest 25% of 96: 24)
    assert len(run.values) == 2 and len(run.history.losses) == 6 + 2
    assert run.history.epoch_ends == [6, 8]
    assert run.history.marks == [{"batch": 6, "epoch": 1, "images": 24, "of": 96}]
    page = (run_dir / "report.html").read_text()
    assert "the 25% of the training images with the highest loss when last seen (24 images)" \
        in page and "96 train, 48 test" in page
    assert "Dashed red: where the training set changed" in page
    assert "2 (the recipe&#x27;s: 3)" in page  # an option that overrode the recipe says so
    assert run.stats.layer_names == ["0", "1", "2", "3", "4"]


def test_report_content(run_dir):
    page = (run_dir / "report.html").read_text()
    assert page.index("<h2>Diagnosis</h2>") < page.index("<h2>Settings</h2>")
    for section in ("Epochs", "Loss and schedule", "Model summary", "A training batch",
                    "Activations", "Gradients and steps", "What the model gets wrong (test set)"):
        assert f"<h2>{section}</h2>" in page
    assert page.count('alt="block ') == 2 * 5  # plot_layer_stats and color_dim per block
    assert "<h3>Block 1 (layers 1.0-1.2)</h3>" in page  # the summary's numbering
    assert "40% and 60% near zero is normal after a ReLU" in page
    for alt in ("confusion matrix", "top losses", "gradient statistics"):
        assert f'alt="{alt}"' in page
    assert "<h3>Most confused</h3>" in page and "<h3>Accuracy per class</h3>" in page
    # the headline and the table agree: percentages, the held-out set named, time in seconds
    assert "<p class='result'>test accuracy " in page
    assert "<th style=\"text-align:right\">time (s)</th>" in page
    for setting in (">model<", ">optimizer<", ">lr schedule<", ">images<", ">classes<"):
        assert setting in page
    assert "<script" not in page and "src=\"http" not in page  # self-contained
    assert "total params: 30,412" in page
    # settings read as words: unset options say what they mean, not JSON's null
    assert ">null<" not in page
    assert "at each epoch&#x27;s end" in page


def test_report_drawn_across_processes_equals_the_one_drawn_in_one(run_dir, monkeypatch):
    """The figures are drawn by forked copies too (forked.py): the page must not depend on
    which process drew what."""
    from convscope import forked, report

    spread = report.render(load_run(run_dir))
    monkeypatch.setattr(forked, "cores", lambda: 1)
    assert report.render(load_run(run_dir)) == spread
    assert spread.count("data:image/png;base64,") >= 15 and "\x00" not in spread


def test_report_command_rebuilds_it(run_dir, capsys):
    (run_dir / "report.html").unlink()
    assert main(["lr-find", "--data", str(run_dir.parent / "data"), "--bs", "16", "--num-it",
                 "12", "--out", str(run_dir / "lr_find.png")]) == 0
    assert main(["report", str(run_dir)]) == 0
    assert "<h2>Learning rate finder</h2>" in (run_dir / "report.html").read_text()
    assert (run_dir / "report.html").is_file()
    assert f"wrote {run_dir / 'report.html'}" in capsys.readouterr().out


def test_report_command_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "Run folder not found" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 2
    assert "lacks metrics.csv, history.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a complete run folder"):
        build_report(tmp_path)


@needs_browser
def test_report_renders_in_a_real_browser(run_dir):
    shot = run_dir / "report-screenshot.png"
    result = check_page(run_dir / "report.html", shot)
    assert result.console_errors == [] and result.exceptions == []
    assert len(result.images) >= 2 * 5 + 7
    assert result.broken_images == []
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")


@needs_browser
def test_the_report_as_the_eye_reads_it(run_dir, tmp_path, monkeypatch):
    """Every figure passes the eye check (tests/eye.py), every image shows whole, a heading
    names what the figures under it draw, and the words say what the run recorded."""
    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    for name in (run_folder.LOSS_PNG, run_folder.SCHED_PNG):  # drawn again, checked this time
        (run_copy / name).unlink()
    drawn = check_drawn_figures(monkeypatch)
    seen = look(build_report(run_copy), tmp_path / "report.png")
    run = load_run(run_copy)
    assert len(drawn) >= 2 * 5 + 5
    blocks = [h for h in seen["headings"] if h.startswith("Block ")]
    assert len(blocks) == len(run.stats.layer_names)
    for el in seen["shown"]:  # "block 1 ..." figures under "Block 1 (layers 1.0-1.2)"
        if el["alt"].startswith("block "):
            assert el["heading"].startswith(f"Block {el['alt'].split()[1]} ("), el
    held = run.history.meta["held_out"]
    other = {"test": "valid", "valid": "test"}[held]
    assert f"What the model gets wrong ({held} set)" in seen["headings"]
    assert [t for t in drawn if f"{other} set" in t] == []
    text = seen["text"]
    assert run.result.line(len(run.values)) in text
    assert f"{run.values[-1]['accuracy']:.2%}" in text.split("Epochs")[1]
    meta = run.history.meta
    assert f"{meta['n_train']:,} train, {meta['n_valid']:,} {held}" in text
    lrs = [g[0] for g in run.history.hps["lr"]]
    schedule = re.search(r"lr schedule\t(.*)", text).group(1)
    assert schedule.startswith(f"1cycle: lr {lrs[0]:.3g} up to {max(lrs):g} ")


@needs_browser
def test_browser_check_catches_errors_and_broken_images(tmp_path):
    """The check above can fail: a page with a script error and a broken image is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><img alt='gone' src='missing.png'>"
                   "<script>console.error('boom'); undefined_function();</script></body></html>")
    result = check_page(bad, tmp_path / "bad.png")
    assert result.console_errors and result.exceptions
    assert [i["alt"] for i in result.broken_images] == ["gone"]
