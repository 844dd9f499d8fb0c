"""The chapter's conv-example spreadsheet, generated: a digit as cells, and convolution layers
whose every output cell is a live formula over a 3x3 window of the layer below.

The book asks its readers to "run conv-example.xlsx yourself and experiment with trace
precedents": trace an activation's precedents and the spreadsheet draws its receptive field,
layer by layer. This writes that sheet for any MNIST digit or image:

- `input`: the image (28 x 28, grayscale, 0..1), with a colour scale so the digit shows;
- layer 1: two editable 3x3 kernels (`kernel1`, `kernel2`) and their outputs (`conv1`,
  `conv2`, 26 x 26), each cell `=MAX(0, SUMPRODUCT(window, kernel))`, a ReLU of a 3x3 window;
- layer 2: a 2 x 3 x 3 kernel over both channels (`kernel3` over conv1, `kernel4` over conv2)
  and its output `conv3` (24 x 24), each cell the ReLU of the two windows' sums.

Every grid is a workbook-level named range; editing a kernel cell recomputes everything
downstream in Excel or LibreOffice. Written with openpyxl: it writes formulas, defined names
and colour scales, and it reads a workbook back, which the tests use to check that the cells
hold formulas (XlsxWriter writes only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

SIZE = 28
NOTES = """How to use this sheet

Each cell of conv1, conv2 and conv3 is a formula: a ReLU (MAX(0, ...)) of the SUMPRODUCT of a
3x3 window of the layer below and a 3x3 kernel. Change any kernel cell and every activation
downstream is recomputed.

Trace precedents (what an activation is computed from):
- Excel: select a cell of conv3, then Formulas > Trace Precedents. Arrows point to the 3x3
  windows of conv1 and conv2 and to the kernels. Select a cell of conv1 in the window and
  trace again: its 3x3 window of the input lights up. Together they are the 5x5 receptive field
  of one conv3 activation: two 3x3 convolutions see 5x5 pixels.
- LibreOffice Calc: Sheet > Detective > Trace Precedents (Shift+F9 repeats it one level up).
- Trace Dependents (the same menus) goes the other way: which activations a pixel reaches.

Named ranges (Formulas > Name Manager, or the Name Box): input, kernel1, kernel2 (layer 1),
conv1, conv2 (their outputs), kernel3 (layer 2, over conv1), kernel4 (layer 2, over conv2),
conv3 (layer 2's output).
"""


@dataclass(frozen=True)
class Grid:
    """A block of cells: top-left (row, col), 1-based, and its size."""

    row: int
    col: int
    rows: int
    cols: int

    def cell(self, r: int, c: int) -> tuple[int, int]:
        return self.row + r, self.col + c

    def ref(self, r0: int = 0, c0: int = 0, h: int | None = None, w: int | None = None,
            absolute: bool = False) -> str:
        from openpyxl.utils import get_column_letter

        h, w = h or self.rows, w or self.cols
        d = "$" if absolute else ""
        a = f"{d}{get_column_letter(self.col + c0)}{d}{self.row + r0}"
        b = f"{d}{get_column_letter(self.col + c0 + w - 1)}{d}{self.row + r0 + h - 1}"
        return f"{a}:{b}"


# the layout of the sheet "conv": rows and columns of each grid
INPUT = Grid(3, 2, SIZE, SIZE)
KERNEL1, KERNEL2 = Grid(3, 32, 3, 3), Grid(8, 32, 3, 3)
CONV1, CONV2 = Grid(3, 37, SIZE - 2, SIZE - 2), Grid(33, 37, SIZE - 2, SIZE - 2)
KERNEL3, KERNEL4 = Grid(3, 65, 3, 3), Grid(8, 65, 3, 3)
CONV3 = Grid(3, 70, SIZE - 4, SIZE - 4)
GRIDS = {"input": INPUT, "kernel1": KERNEL1, "kernel2": KERNEL2, "conv1": CONV1,
         "conv2": CONV2, "kernel3": KERNEL3, "kernel4": KERNEL4, "conv3": CONV3}
SHEET = "conv"


def image_for_sheet(image: Tensor) -> Tensor:
    """An image (C, H, W) uint8 -> (28, 28) float in 0..1: grayscale, resized as `convscope
    kernel` shows it."""
    import torch.nn.functional as F

    x = image.float() / 255
    if x.shape[0] == 3:
        x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x[None], size=(SIZE, SIZE), mode="area")[0]
    return x[0]


def expected(image: Tensor, k1: Tensor, k2: Tensor, k3: Tensor, k4: Tensor) -> dict[str, Tensor]:
    """What the sheet computes, by convscope's own convolution: conv1, conv2 (26 x 26) and
    conv3 (24 x 24) for a (28, 28) image and 3x3 kernels."""
    from convscope.conv import conv2d_matmul

    x = image[None, None]
    layer1 = conv2d_matmul(x, torch.stack([k1, k2])[:, None]).clamp_min(0)  # (1, 2, 26, 26)
    layer2 = conv2d_matmul(layer1, torch.stack([k3, k4])[None]).clamp_min(0)  # (1, 1, 24, 24)
    return {"conv1": layer1[0, 0], "conv2": layer1[0, 1], "conv3": layer2[0, 0]}


def write_conv_sheet(path: str | Path, image: Tensor, source: str,
                     kernels: tuple[str, str] = ("top_edge", "left_edge"),
                     layer2: tuple[str, str] = ("box_blur", "box_blur")) -> Path:
    """Write the workbook for a (28, 28) image in 0..1 (see `image_for_sheet`)."""
    from openpyxl import Workbook
    from openpyxl.formatting.rule import ColorScaleRule
    from openpyxl.styles import Font
    from openpyxl.workbook.defined_name import DefinedName

    from convscope.conv import kernel
    from convscope.files import atomic_write

    wb = Workbook()
    ws = wb.active
    ws.title = SHEET
    bold = Font(bold=True)

    def title(grid: Grid, text: str) -> None:
        ws.cell(grid.row - 1, grid.col, text).font = bold

    def values(grid: Grid, t: Tensor) -> None:
        for r in range(grid.rows):
            for c in range(grid.cols):
                ws.cell(*grid.cell(r, c), round(float(t[r, c]), 6))

    title(INPUT, f"input: {source} (0..1)")
    values(INPUT, image)
    ks = [kernel(kernels[0]), kernel(kernels[1]), kernel(layer2[0]), kernel(layer2[1])]
    for grid, k, text in ((KERNEL1, ks[0], f"kernel1: {kernels[0]}"),
                          (KERNEL2, ks[1], f"kernel2: {kernels[1]}"),
                          # short enough to show whole before conv3 (conv3's title says
                          # which layer each reads)
                          (KERNEL3, ks[2], f"kernel3: {layer2[0]}"),
                          (KERNEL4, ks[3], f"kernel4: {layer2[1]}")):
        title(grid, text)
        values(grid, k)
    for out, src, k, text in ((CONV1, INPUT, KERNEL1, "conv1 = ReLU(input * kernel1)"),
                              (CONV2, INPUT, KERNEL2, "conv2 = ReLU(input * kernel2)")):
        title(out, text)
        kref = k.ref(absolute=True)
        for r in range(out.rows):
            for c in range(out.cols):
                ws.cell(*out.cell(r, c), f"=MAX(0,SUMPRODUCT({src.ref(r, c, 3, 3)},{kref}))")
    title(CONV3, "conv3 = ReLU(conv1 * kernel3 + conv2 * kernel4)")
    k3, k4 = KERNEL3.ref(absolute=True), KERNEL4.ref(absolute=True)
    for r in range(CONV3.rows):
        for c in range(CONV3.cols):
            ws.cell(*CONV3.cell(r, c), f"=MAX(0,SUMPRODUCT({CONV1.ref(r, c, 3, 3)},{k3})"
                                       f"+SUMPRODUCT({CONV2.ref(r, c, 3, 3)},{k4}))")
    # the darkest shade light enough for the black numbers on it to read (contrast 4.5:1)
    scale = ColorScaleRule(start_type="min", start_color="FFFFFF", end_type="max",
                           end_color="5B9BD5")
    for name, grid in GRIDS.items():
        ws.conditional_formatting.add(grid.ref(), scale)
        wb.defined_names[name] = DefinedName(name, attr_text=f"{SHEET}!{grid.ref(absolute=True)}")
    for col in range(1, CONV3.col + CONV3.cols + 1):
        ws.column_dimensions[ws.cell(1, col).column_letter].width = 4.5
    notes = wb.create_sheet("notes")
    for i, line in enumerate(NOTES.splitlines(), start=1):
        notes.cell(i, 1, line)
    notes.column_dimensions["A"].width = 100
    ws.cell(1, 2, "Trace precedents on any conv3 cell: see the notes sheet.").font = bold
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, wb.save)
    return path
