"""convscope in a real Jupyter kernel (nbclient + ipykernel): figures, rich displays, live
progress, and docs/tour.ipynb run top to bottom."""

import importlib.util
import json
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="the dev extras install nbclient")
nbformat = pytest.importorskip("nbformat", reason="the dev extras install nbformat")

DOCS = Path(__file__).parent.parent / "docs"


def tour_module():
    spec = importlib.util.spec_from_file_location("tour_notebook", DOCS / "tour_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def execute(cells: list[str], cwd: Path) -> list[list[dict]]:
    """Run code cells in a fresh python3 kernel; return each cell's outputs."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return [cell.outputs for cell in nb.cells]


def data_of(outputs: list[dict], mime: str) -> list[str]:
    return [o["data"][mime] for o in outputs if mime in o.get("data", {})]


def test_tour_notebook_is_in_step_with_tour_md():
    tour = tour_module()
    assert (DOCS / "tour.ipynb").read_text() == tour.render((DOCS / "tour.md").read_text()), \
        "docs/tour.ipynb is out of date: run `python docs/tour_notebook.py`"
    nb = json.loads((DOCS / "tour.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] for c in code)  # executed outputs are not committed
    assert any("stats.color_dim(1)" in "".join(c["source"]) for c in code)


def test_tour_converter_splits_at_shown_values():
    tour = tour_module()
    block = ">>> a = 1\n>>> a\n1\n>>> for i in range(2):\n...     i\n0\n1\n>>> b = 2\n"
    assert tour.code_cells(block) == ["a = 1\na", "for i in range(2):\n    i", "b = 2"]


def test_tour_notebook_runs_in_a_real_kernel(tmp_path):
    nb = nbformat.read(DOCS / "tour.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors  # (execute raises on the first error already)
    figures = {"".join(c.source).strip(): data_of(c.outputs, "image/png") for c in nb.cells
               if c.cell_type == "code"}
    for cell in ("fig                      # as a notebook cell's last value, the figure "
                 "shows as an image", "stats.plot_layer_stats(1)", "stats.color_dim(1)"):
        assert len(figures[cell]) == 1, cell  # shown once, as an image


README_CELLS = [
    """from convscope import ActivationStats, DataLoaders, Learner, diagnose, mnist, simple_cnn
import torch
torch.manual_seed(0)
data = mnist().subset(2048, 512)
data""",
    "dls = DataLoaders.from_data(data, bs=256, seed=0)\ndls",
    "dls.show_batch(9)",
    """learn = Learner(dls, simple_cnn(), cbs=[ActivationStats()])
learn.fit_one_cycle(2, lr_max=1e-2)""",
    "learn.recorder.values",
    "learn.recorder.plot_loss()",
    "learn.summary()",
    "diagnose(learn)",
    "learn.activation_stats.color_dim(1)",
    "learn",
    "learn.lr_find(num_it=20)",
    # the progress bar of a long task outside training (decoding a folder), shown at once
    """from convscope.task_bar import TaskBar
bar = TaskBar("decoding 10 images", 10, delay=0)
for done in range(1, 6):
    bar.update(done)""",
    """with TaskBar("decoding 3 images", 3, delay=0) as done_bar:
    done_bar.update(3)""",
]


def test_readme_examples_show_as_a_reader_expects(tmp_path):
    """A notebook nobody prepared, running README's examples cell by cell (no magic), then the
    progress bar a long task outside training shows."""
    (data, dls, batch, fit, values, loss, summary, diagnosis, colour, learner,
     lr_find, task, finished_task) = execute(README_CELLS, tmp_path)
    one_line = data_of(data, "text/plain")[0]
    assert one_line.startswith("ImageData: 2048 train and 512 valid images of 1 x 28 x 28")
    assert "\n" not in one_line and "tensor" not in one_line
    assert data_of(dls, "text/plain")[0].startswith("DataLoaders: train 2048 images")
    for figure in (batch, loss, colour):
        assert len(data_of(figure, "image/png")) == 1  # an image, once
    # live progress: one output area, updated in place, ending with the epoch table
    assert [o["output_type"] for o in fit] == ["display_data"]
    progress = data_of(fit, "text/html")[0]
    assert "<table>" in progress and progress.count("<tr>") == 3  # header + 2 epochs
    assert not [o for o in fit if o["output_type"] == "stream"]
    table = data_of(values, "text/html")[0]
    assert "<th" in table and "train_loss" in table
    assert "0.0000000" not in data_of(values, "text/plain")[0]  # no 17-digit floats
    assert "<table>" in data_of(summary, "text/html")[0]
    findings = data_of(diagnosis, "text/html")[0]
    assert 'class="finding' in findings and "border-left:6px solid" in findings
    assert "Finding(" not in data_of(diagnosis, "text/plain")[0]
    assert "callbacks:" in data_of(learner, "text/html")[0]
    found = data_of(lr_find, "text/html")[0]
    assert "swept 20 batches" in found and "data:image/png;base64," in found
    # a task's bar: one output area updated in place, and gone when the task is done
    assert [o["output_type"] for o in task] == ["display_data"]
    bar = data_of(task, "text/html")[0]
    assert '<progress value="5" max="10"' in bar and "decoding 10 images: 5/10" in bar
    assert [o["output_type"] for o in finished_task] == ["display_data"]
    assert data_of(finished_task, "text/html") == [""]
