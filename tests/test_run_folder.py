"""A run folder holds one run: refused, replaced, resumed and interrupted as README says."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_error, write_idx_folder
from safetensors.torch import load_file

from convscope import run_folder
from convscope.cli import main
from convscope.run import outputs, train

QUICK = ["--subset", "640", "--bs", "64", "--epochs", "1"]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A complete run with activation statistics, trained once for the module."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *QUICK, "--out", str(run)]) == 0
    return run


def test_resume_of_a_complete_run_changes_no_file(finished, capsys):
    before = files(finished)
    capsys.readouterr()
    assert main(["train", "--resume", str(finished)]) == 0
    out = capsys.readouterr().out
    assert "is complete (1 epoch trained, its outputs written): nothing left to train" in out
    assert f"`convscope report {finished}` rebuilds its report" in out
    assert files(finished) == before
    stats = load_file(finished / "activation_stats.safetensors")
    assert stats["hists.0"].shape[0] == 2  # of 640 / 64 batches, one in 8: 0 and 8
    assert "<h2>Activations</h2>" in (finished / "report.html").read_text()
    assert main(["report", str(finished)]) == 0


@pytest.mark.parametrize("extra,named", [
    (["--epochs", "5"], "--epochs"),
    (["--lr", "0.1", "--no-stats"], "--lr, --no-stats"),
    (["--overwrite"], "--overwrite"),
])
def test_resume_refuses_options_other_than_device_and_nproc(finished, capsys, extra, named):
    before = files(finished)
    assert main(["train", "--resume", str(finished), *extra]) == 2
    line = cli_error(capsys.readouterr().err)
    assert f"it takes no {named} (only --device and --nproc may change)" in line
    assert files(finished) == before


def test_out_onto_a_run_is_refused_and_overwrite_replaces_it(finished, tmp_path, capsys):
    run = tmp_path / "run"
    for p in finished.iterdir():
        (run / p.name).parent.mkdir(exist_ok=True)
        (run / p.name).write_bytes(p.read_bytes())
    (run / "notes.txt").write_text("mine")
    before = files(run)
    assert main(["train", *QUICK, "--no-stats", "--out", str(run)]) == 2
    line = cli_error(capsys.readouterr().err)
    assert "holds a run already" in line
    assert f"`convscope train --resume {run}` continues it, --overwrite replaces it" in line
    assert files(run) == before

    assert main(["train", *QUICK, "--no-stats", "--out", str(run), "--overwrite"]) == 0
    assert not (run / "activation_stats.safetensors").exists()  # the old run's, cleared
    assert (run / "notes.txt").read_text() == "mine"  # not the run's: kept
    page = (run / "report.html").read_text()
    assert "Activations" not in page and "Recorded on" not in page
    assert json.loads((run / "config.json").read_text())["stats"] is False


def test_config_keeps_resolved_paths_so_resume_works_from_anywhere(tmp_path, monkeypatch):
    write_idx_folder(tmp_path / "digits", n_train=128, n_valid=64)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "digits", "--bs", "32", "--epochs", "2", "--no-stats",
                 "--out", "run", "--checkpoint-every", "2"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == str(tmp_path / "digits")
    assert config["out"] == str(tmp_path / "run")
    # make it look interrupted: an earlier checkpoint, no outputs
    (tmp_path / "run" / "report.html").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report.html").is_file()


def test_a_run_folder_from_before_a_setting_resumes_as_it_was_trained(tmp_path):
    """config.json of a run written before `hard` existed: that run trained every epoch on
    every image, so its resume must too (the new default would change its schedule)."""
    run = tmp_path / "run"
    run.mkdir()
    config = {"epochs": 3, "bs": 64, "subset": 640}
    (run / "config.json").write_text(json.dumps(config))
    assert run_folder.load_config(run).hard == 1.0
    (run / "config.json").write_text(json.dumps({**config, "hard": 0.25}))
    assert run_folder.load_config(run).hard == 0.25


def test_ctrl_c_while_loading_data_leaves_nothing_and_says_so(tmp_path, monkeypatch, capsys):
    def interrupted(cfg, log=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "load_data", interrupted)
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(run)]) == 130
    line = cli_error(capsys.readouterr().err)
    assert "interrupted while loading the data: nothing was written. Run the same command" \
        in line
    assert not run.exists()


def test_ctrl_c_while_writing_the_report_then_resume_writes_it(tmp_path, monkeypatch, capsys):
    real = outputs.build_report

    def interrupted(run_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "build_report", interrupted)
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(run)]) == 130
    line = cli_error(capsys.readouterr().err)
    assert "interrupted while writing the run's outputs: training had finished" in line
    assert f"`convscope train --resume {run}` writes them" in line
    assert not (run / "report.html").exists()
    checkpoint = (run / "checkpoint.safetensors").read_bytes()
    stats = load_file(run / "activation_stats.safetensors")

    monkeypatch.setattr(outputs, "build_report", real)
    assert main(["train", "--resume", str(run)]) == 0
    assert "holds the end of training (1 epochs); writing the outputs" in capsys.readouterr().out
    assert (run / "report.html").is_file()
    assert (run / "checkpoint.safetensors").read_bytes() == checkpoint  # nothing retrained
    again = load_file(run / "activation_stats.safetensors")
    assert again.keys() == stats.keys() and all((again[k] == stats[k]).all() for k in stats)


def test_impossible_out_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", *QUICK, "--out", str(tmp_path / "file")]) == 2
    assert "is a file; expected a folder for the run" in cli_error(capsys.readouterr().err)
    assert main(["train", *QUICK, "--out", str(tmp_path / "file" / "run")]) == 2
    assert "which is a file; choose a folder path" in cli_error(capsys.readouterr().err)
    assert main(["train", *QUICK, "--out", "/proc/convscope-cannot-be-here"]) == 2
    assert "cannot write the run folder" in cli_error(capsys.readouterr().err)


def test_unwritable_out_from_the_installed_command(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "convscope", "train", *QUICK, "--out",
                           str(tmp_path / "file" / "run")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "which is a file" in cli_error(proc.stderr)


def test_data_paths_are_never_misread(tmp_path, capsys):
    folder = write_idx_folder(tmp_path / "mixed")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    for cls in ("a", "b"):  # a few class folders of images beside the IDX files
        (folder / cls).mkdir()
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run")]) == 2
    line = cli_error(capsys.readouterr().err)
    assert "is an incomplete IDX folder: it has train-images-idx3-ubyte, " in line
    assert "but lacks t10k-labels-idx1-ubyte (raw or .gz)" in line
    assert not (tmp_path / "run").exists()
    assert main(["train", "--data", str(folder / "train-images-idx3-ubyte.gz")]) == 2
    assert "is a file; expected a folder" in cli_error(capsys.readouterr().err)


def test_a_bug_keeps_its_traceback_and_debug_shows_every_one(tmp_path, monkeypatch, capsys):
    def bug(cfg, log=None):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train, "load_data", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", *QUICK, "--out", str(tmp_path / "run")])
    monkeypatch.setenv("CONVSCOPE_DEBUG", "1")
    assert main(["train", "--epochs", "-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "--epochs: expected an integer >= 0" in err


def test_resume_of_a_two_process_run_starts_two_again(tmp_path, capsys):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "convscope", "train", "--nproc", "2", *QUICK, "--epochs",
           "2", "--no-stats", "--out", str(run)]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    config = json.loads((run / "config.json").read_text())
    assert config["nproc"] == 2
    (run / "report.html").unlink()
    (run / "model.safetensors").unlink()
    proc = subprocess.run([sys.executable, "-m", "convscope", "train", "--resume", str(run)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "distributed: 2 processes" in proc.stdout
    assert (run / "model.safetensors").is_file()


def test_first_ctrl_c_while_writing_outputs_lets_the_report_finish(tmp_path, monkeypatch,
                                                                    capsys):
    import signal

    real = outputs.build_report

    def pressed(run_dir):  # a user's Ctrl-C while the report is being drawn
        os.kill(os.getpid(), signal.SIGINT)
        return real(run_dir)

    monkeypatch.setattr(outputs, "build_report", pressed)
    before = signal.getsignal(signal.SIGINT)
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(run)]) == 0
    assert "writing its outputs and report first" in capsys.readouterr().err
    assert (run / "report.html").is_file()
    assert signal.getsignal(signal.SIGINT) is before


def test_divergence_says_what_to_run_next(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--lr", "1000", "--no-bn", "--schedule", "constant", *QUICK,
                 "--no-stats", "--out", str(run)]) == 3
    line = cli_error(capsys.readouterr().err)
    assert f"To train again in {run}, add --overwrite" in line
    # no checkpoint exists yet, and the rate suggested is a tenth of the highest one used
    assert "no checkpoint had been written yet" in line and "(e.g. 100)" in line


def test_reports_and_comparisons_read_an_older_run_as_it_was_trained(finished, tmp_path):
    """A run folder from before `hard` existed: its report says every image every epoch,
    and a config.json that is not an object is refused in one line."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(finished, old)
    config = json.loads((old / "config.json").read_text())
    del config["hard"]
    (old / "config.json").write_text(json.dumps(config))
    assert run_folder.load_run(old).config["hard"] == 1.0
    (old / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object of settings, received a list"):
        run_folder.load_run(old)
    with pytest.raises(ValueError, match="expected a JSON object of settings, received a list"):
        run_folder.load_config(old)


@pytest.mark.parametrize("before,expected", [
    ("torch", "interrupted while starting up, before anything was written. Run the same"),
    ("convscope.run.train", "interrupted while starting up, before anything was written"),
    ("convscope.image_folders", "interrupted while starting up, before anything was written"),
    ("matplotlib", None),  # after training: the outputs are written first, then exit 0
])
def test_ctrl_c_at_points_of_start_up_and_end(tmp_path, before, expected):
    """A real process interrupted just before it imports `before`: one line that says what
    was kept and what to run next, exit 130, no traceback, nothing half-written; at the end,
    the first Ctrl-C lets the outputs finish."""
    hook = Path(__file__).parent / "hooks"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get(
        "PYTHONPATH", "")]), "CONVSCOPE_TEST_SIGINT_BEFORE": before, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "convscope", "train", *QUICK, "--no-stats",
                           "--out", str(run)], env=env, capture_output=True, text=True,
                          timeout=300)
    if expected is None:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "writing its outputs and report first" in proc.stderr
        assert (run / "report.html").is_file()
        return
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert expected in cli_error(proc.stderr)
    assert not run.exists()
