"""convscope explore: click an activation in a real browser (Chromium over the DevTools
protocol) and the outlined input box is receptive_field's box for that position."""

import json
import os

import pytest
from browser import check_page, find_chromium
from conftest import cli_error
from eye import look

from convscope.cli import main
from convscope.conv import receptive_field
from convscope.explore import load_model

needs_browser = pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"),
                                   reason="no chromium on PATH (CI installs it)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explore")
    run = tmp / "run"
    assert main(["train", "--subset", "640", "--bs", "64", "--epochs", "1", "--no-stats",
                 "--out", str(run)]) == 0
    assert main(["explore", str(run), "--index", "5"]) == 0
    return run, run / "explore.html"


def expected_box(run, block: int, y: int, x: int, size: int = 28) -> list[int]:
    """Input rows/cols of the receptive field of block `block`'s output (y, x), clipped to
    the image: convscope.conv.receptive_field's size, jump and start."""
    model, _ = load_model(run)
    row = next(r for r in receptive_field(model, (1, 28, 28)) if r["layer"] == f"{block}.0")
    def span(i):
        centre = row["start"] + i * row["jump"]
        return max(0, int(centre - row["size"] / 2)), min(size - 1,
                                                          int(centre + row["size"] / 2) - 1)
    (r0, r1), (c0, c1) = span(y), span(x)
    return [r0, c0, r1, c1]


def click(call, layer: int, ch: int, y: int, x: int) -> None:
    """A real mouse click at the centre of one cell of one map."""
    script = (f"(() => {{ const m = explore.maps.find(m => m.layer === {layer} && m.ch === {ch});"
              f" m.canvas.scrollIntoView({{block: 'center'}});"
              f" const r = m.canvas.getBoundingClientRect();"
              f" return JSON.stringify([r.left + ({x} + 0.5) * m.cell,"
              f" r.top + ({y} + 0.5) * m.cell]); }})()")
    px, py = json.loads(call("Runtime.evaluate", expression=script,
                             returnByValue=True)["result"]["value"])
    for kind in ("mousePressed", "mouseReleased"):
        call("Input.dispatchMouseEvent", type=kind, x=px, y=py, button="left", clickCount=1)


def read(call, expression: str):
    result = call("Runtime.evaluate", expression=expression, returnByValue=True)["result"]
    return result.get("value")


CASES = [(4, 0, 0), (3, 0, 0), (3, 1, 1), (2, 0, 0), (2, 3, 3), (2, 1, 2), (1, 6, 0)]


@needs_browser
def test_clicking_an_activation_outlines_its_receptive_field(page, tmp_path):
    run, html = page
    seen = {}

    def interact(call):
        for block, y, x in CASES:
            click(call, block, 0, y, x)
            seen[(block, y, x)] = [int(v) for v in read(
                call, "document.getElementById('input-map').dataset.box").split(",")]
        # the keyboard: focus a map, move right with the arrow key
        read(call, "explore.maps.find(m => m.layer === 2 && m.ch === 1).canvas.focus()")
        for kind in ("keyDown", "keyUp"):
            call("Input.dispatchKeyEvent", type=kind, key="ArrowRight", code="ArrowRight",
                 windowsVirtualKeyCode=39)
        seen["key"] = [int(v) for v in read(
            call, "document.getElementById('input-map').dataset.box").split(",")]
        # trace dependents: an input pixel outlines what it reaches, in every layer
        click(call, -1, 0, 0, 0)
        seen["dependents"] = read(call, "JSON.stringify(explore.boxes)")
        seen["info"] = read(call, "document.getElementById('info').textContent")
        seen["pixel"] = read(call, "document.getElementById('info').textContent")
        seen["prediction"] = read(call, "document.getElementById('prediction').textContent")
        for kind in ("keyDown", "keyUp"):  # Esc clears the selection and the panel
            call("Input.dispatchKeyEvent", type=kind, key="Escape", code="Escape",
                 windowsVirtualKeyCode=27)
        seen["cleared"] = read(call, "document.getElementById('info').textContent")
        seen["logits"] = read(call, "JSON.stringify([...document.querySelectorAll("
                                    "'figure.logit figcaption')].map(f => f.textContent))")
        seen["shades"] = read(call, "JSON.stringify(explore.maps.filter(m => m.layer === 4)"
                                    ".map(m => [...m.canvas.getContext('2d')"
                                    ".getImageData(5, 5, 1, 1).data.slice(0, 3)]))")
        return seen

    result = check_page(html, tmp_path / "explore.png", interact=interact)
    assert result.console_errors == [] and result.exceptions == []
    for block, y, x in CASES:
        assert seen[(block, y, x)] == expected_box(run, block, y, x), (block, y, x)
    assert seen[(4, 0, 0)] == [0, 0, 27, 27]  # the last layer sees the whole (padded) digit
    assert seen["key"] == expected_box(run, 2, 0, 1)
    boxes = json.loads(seen["dependents"])
    assert boxes["-1"] == [0, 0, 0, 0] and set(boxes) == {"-1", "0", "1", "2", "3", "4"}
    assert "reaches layer 0: rows 0-1, cols 0-1" in seen["info"]
    assert " of 255" in seen["pixel"]  # an input pixel says its scale
    # the prediction stays after clicks; Esc leaves no stale panel
    assert seen["prediction"].startswith("Prediction: ") and seen["cleared"] == \
        "Nothing selected."
    # the last layer: ten logits, each named by its class with its value, shaded against
    # each other (not ten black squares)
    logits = json.loads(seen["logits"])
    assert [c.split(":")[0] for c in logits] == [str(d) for d in range(10)]
    shades = {tuple(rgb) for rgb in json.loads(seen["shades"])}
    assert len(shades) > 1 and (0, 0, 0) in shades and (255, 255, 255) in shades


@needs_browser
def test_the_explore_page_as_the_eye_reads_it(page, tmp_path):
    """Every map shows whole, under a heading that counts and names its maps; the input is
    the digit the title names; the prediction is the model's."""
    from convscope.data import mnist
    from convscope.inference import load_learner

    run, html = page
    seen = look(html, tmp_path / "explore.png")
    canvases = [el for el in seen["shown"] if el["tag"] == "canvas"]
    assert [el["alt"] for el in canvases if el["heading"] == "input"] == ["input image"]
    assert not canvases[0]["blank"]  # the digit
    layers = [h for h in seen["headings"] if h.startswith("layer ")]
    assert len(layers) == 5
    for heading in layers:  # "layer 1: 16 channels of 7x7 (conv 3x3, stride 2, padding 1)"
        name, count = heading.split(":")[0], int(heading.split(": ")[1].split(" ")[0])
        under = [el for el in canvases if el["heading"] == heading]
        assert [el["alt"].split(":")[0] for el in under] == [f"{name} channel {c}"
                                                             for c in range(count)], heading
        assert len({(el["width"], el["height"]) for el in under}) == 1  # one scale a layer
    data = mnist()
    label = data.classes[int(data.y_train[5])]
    assert f"MNIST training digit 5 (a {label})" in seen["headings"][0]
    said = load_learner(run).predict(data.x_train[5])
    prediction = next(line for line in seen["text"].splitlines()
                      if line.startswith("Prediction: "))
    assert prediction == f"Prediction: {said.label} ({100 * said.probability:.1f}%)"


def test_page_is_self_contained(page):
    _, html = page
    text = html.read_text()
    assert "<script>" in text and "src=\"http" not in text and "href=\"http" not in text
    assert '"layers":' in text and text.count("</script>") == 1


def test_explore_errors(tmp_path, capsys):
    assert main(["explore", str(tmp_path)]) == 2
    assert "no model.safetensors" in cli_error(capsys.readouterr().err)
