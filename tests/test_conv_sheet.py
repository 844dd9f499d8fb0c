"""convscope conv-sheet: the chapter's conv-example workbook, recomputed by a spreadsheet engine
nobody here wrote (LibreOffice, headless)."""

import csv
import math
import os
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F
from conftest import cli_error
from openpyxl import load_workbook
from PIL import Image

from convscope.cli import main
from convscope.conv import kernel
from convscope.conv_sheet import CONV1, CONV2, CONV3, GRIDS, INPUT, KERNEL1, expected
from convscope.data import mnist

SOFFICE = shutil.which("soffice") or shutil.which("libreoffice")
# CI installs Debian's libreoffice-calc-nogui (.ci/run): there a missing engine is a failure
needs_office = pytest.mark.skipif(SOFFICE is None and not os.environ.get("CI"),
                                  reason="no LibreOffice on PATH (CI installs it)")


def recompute(xlsx, tmp_path) -> list[list[str]]:
    """LibreOffice opens the workbook, computes every formula and writes the sheet's values."""
    out = tmp_path / "csv"
    subprocess.run([SOFFICE or "soffice", "--headless", f"-env:UserInstallation=file://"
                    f"{tmp_path / 'profile'}", "--convert-to",
                    "csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,false,false,"
                    "false,-1", str(xlsx), "--outdir", str(out)],
                   check=True, capture_output=True, timeout=180)
    return list(csv.reader((out / f"{xlsx.stem}-conv.csv").open()))


def grid(rows, g) -> torch.Tensor:
    return torch.tensor([[float(rows[g.row - 1 + r][g.col - 1 + c]) for c in range(g.cols)]
                         for r in range(g.rows)])


@pytest.fixture(scope="module")
def sheet(tmp_path_factory):
    path = tmp_path_factory.mktemp("sheet") / "conv.xlsx"
    assert main(["conv-sheet", "--index", "7", "--out", str(path)]) == 0
    return path


def test_cells_are_formulas_and_grids_are_named(sheet):
    wb = load_workbook(sheet)
    ws = wb["conv"]
    assert set(GRIDS) <= set(wb.defined_names)
    assert wb.defined_names["conv1"].attr_text == "conv!$AK$3:$BJ$28"
    assert ws.cell(*CONV1.cell(0, 0)).value == "=MAX(0,SUMPRODUCT(B3:D5,$AF$3:$AH$5))"
    assert ws.cell(*CONV3.cell(23, 23)).value.startswith("=MAX(0,SUMPRODUCT(")
    formulas = sum(str(ws.cell(*g.cell(r, c)).value).startswith("=") for g in (CONV1, CONV2,
                   CONV3) for r in range(g.rows) for c in range(g.cols))
    assert formulas == 2 * 26 * 26 + 24 * 24
    assert isinstance(ws.cell(*INPUT.cell(10, 10)).value, (int, float))  # the input is data
    assert len(ws.conditional_formatting) == len(GRIDS)  # a colour scale on every grid
    notes = "\n".join(str(c.value) for c in wb["notes"]["A"] if c.value)
    assert "Formulas > Trace Precedents" in notes and "Detective > Trace Precedents" in notes


@pytest.fixture(scope="module")
def computed(sheet, tmp_path_factory) -> list[list[str]]:
    """The sheet's values as LibreOffice computes them, once for the tests that read them."""
    return recompute(sheet, tmp_path_factory.mktemp("computed"))


@needs_office
def test_libreoffice_computes_what_convscope_and_torch_compute(computed):
    rows = computed
    image = grid(rows, INPUT)
    assert torch.allclose(image, mnist().x_train[7, 0].float() / 255, atol=1e-6)
    k1, k2, blur = kernel("top_edge"), kernel("left_edge"), kernel("box_blur")
    ours = expected(image, k1, k2, blur, blur)
    layer1 = F.conv2d(image[None, None], torch.stack([k1, k2])[:, None]).relu()
    layer2 = F.conv2d(layer1, torch.stack([blur, blur])[None]).relu()
    for name, g, ref in (("conv1", CONV1, layer1[0, 0]), ("conv2", CONV2, layer1[0, 1]),
                         ("conv3", CONV3, layer2[0, 0])):
        got = grid(rows, g)
        assert torch.allclose(got, ours[name], atol=1e-4), name
        assert torch.allclose(got, ref, atol=1e-4), name
    assert grid(rows, CONV3).max() > 0.5  # not a sheet of zeros


@needs_office
def test_the_workbook_as_the_eye_reads_it(sheet, computed):
    """As LibreOffice computes it: no error in any cell, no layer a blank block, every value
    short enough for its 4.5-character column and readable on its shade, and each grid's
    title shown whole and naming what the grid holds: the digit (with its label), the
    kernel, the layers a formula reads."""
    rows = computed
    errors = [v for row in rows for v in row if v.startswith(("Err:", "#"))]
    assert errors == []
    for name, g in GRIDS.items():
        values = grid(rows, g)
        if not name.startswith("kernel"):  # a box blur's weights are one value by right
            assert values.max() > values.min(), f"{name} is one colour"
        # a 4.5-character column rounds decimals away, but shows ### for 4 integer digits
        assert values.abs().max() < 1000, f"{name} has a value too wide for its column"
    ws = load_workbook(sheet)["conv"]
    titles = {name: ws.cell(g.row - 1, g.col).value for name, g in GRIDS.items()}
    label = mnist().classes[int(mnist().y_train[7])]
    assert titles["input"] == f"input: MNIST training digit 7 (a {label}) (0..1)"
    for name, kern in (("kernel1", "top_edge"), ("kernel2", "left_edge"), ("kernel3", "box_blur"),
                       ("kernel4", "box_blur")):
        assert titles[name].startswith(f"{name}") and titles[name].endswith(f": {kern}")
        assert torch.allclose(grid(rows, GRIDS[name]), kernel(kern), atol=1e-6), name
    for name, reads in (("conv1", ("input", "kernel1")), ("conv2", ("input", "kernel2")),
                        ("conv3", ("conv1", "kernel3", "conv2", "kernel4"))):
        assert titles[name].startswith(f"{name} = ReLU(") and all(r in titles[name]
                                                                    for r in reads)
        # its first cell reads the top-left window of each layer and the whole of each kernel
        # its title names
        formula = ws.cell(*GRIDS[name].cell(0, 0)).value
        for r in reads:
            ref = (GRIDS[r].ref(absolute=True) if r.startswith("kernel")
                   else GRIDS[r].ref(0, 0, 3, 3))
            assert ref in formula, (name, r, formula)
    # each title shows whole: it runs on over empty cells, up to the next cell that holds
    # something (4.5 characters a column)
    for name, g in GRIDS.items():
        free = next((c for c in range(g.col + 1, ws.max_column + 1)
                     if ws.cell(g.row - 1, c).value is not None), None)
        room = 4.5 * (free - g.col) if free is not None else math.inf
        assert len(titles[name]) <= room, f"{titles[name]!r} cut at {room:g} characters"
    # the darkest shade of a grid's colour scale still shows the black numbers on it
    for rule in (r for cf in ws.conditional_formatting for r in cf.rules):
        for colour in rule.colorScale.color:
            assert contrast_with_black(colour.rgb) >= 4.5, colour.rgb


def contrast_with_black(rgb: str) -> float:
    """WCAG's contrast ratio of black text on a colour "RRGGBB" (or "AARRGGBB"): 4.5 is the
    least it asks of body text."""
    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(int(rgb[-6:][i:i + 2], 16) / 255) for i in (0, 2, 4))
    return (0.2126 * r + 0.7152 * g + 0.0722 * b + 0.05) / 0.05


@needs_office
def test_editing_a_kernel_recomputes_everything_downstream(sheet, tmp_path):
    wb = load_workbook(sheet)
    ws = wb["conv"]
    sharpen = kernel("sharpen")
    for r in range(3):
        for c in range(3):
            ws.cell(*KERNEL1.cell(r, c), float(sharpen[r, c]))
    edited = tmp_path / "edited.xlsx"
    wb.save(edited)
    rows = recompute(edited, tmp_path)
    blur = kernel("box_blur")
    ours = expected(grid(rows, INPUT), sharpen, kernel("left_edge"), blur, blur)
    assert torch.allclose(grid(rows, CONV1), ours["conv1"], atol=1e-4)
    assert torch.allclose(grid(rows, CONV3), ours["conv3"], atol=1e-4)


def test_an_image_and_chosen_kernels(tmp_path, capsys):
    img = tmp_path / "colour.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(img)
    out = tmp_path / "c.xlsx"
    assert main(["conv-sheet", str(img), "--kernel", "sharpen", "right_edge", "--out",
                 str(out)]) == 0
    assert "through sharpen and right_edge" in capsys.readouterr().out
    ws = load_workbook(out)["conv"]
    assert ws.cell(KERNEL1.row - 1, KERNEL1.col).value == "kernel1: sharpen"


@pytest.mark.parametrize("args,message", [
    (["--kernel", "a", "b", "c"], "--kernel: expected one or two kernel names"),
    (["--kernel", "wobble"], "wobble"),
    (["--out", "x.csv"], "--out: expected a .xlsx file"),
    (["--index", "99999"], "--index: MNIST has 60000 training digits"),
])
def test_bad_input_is_one_line(capsys, args, message):
    assert main(["conv-sheet", *args]) == 2
    assert message in cli_error(capsys.readouterr().err)
