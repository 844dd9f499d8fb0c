import importlib
import pkgutil

import convscope


def test_every_public_name_resolves_to_what_its_module_defines():
    for name, module in convscope._WHERE.items():
        assert getattr(convscope, name) is getattr(importlib.import_module(module), name)


def test_no_public_name_is_also_a_module_name():
    """A submodule import sets the package attribute of its name, which would shadow a public
    function of the same name (as `convscope.summary` once shadowed `summary()`)."""
    modules = {m.name for m in pkgutil.iter_modules(convscope.__path__)}
    assert not set(convscope._WHERE) & modules


def test_readme_lists_every_train_option_with_its_default():
    """README's option table for `convscope train` names each option of TrainConfig and, for
    those that take a value, the default TrainConfig declares (a recipe change once left the
    table behind)."""
    import dataclasses
    from pathlib import Path

    from convscope.config import TrainConfig

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("### convscope train\n\n")[1]
    table = section[:section.index("\n\n")].splitlines()  # the first table after the heading
    assert table[0].startswith("| option | default |")
    rows = {}
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`").split()[0]] = cells[1].strip("`")
    for f in dataclasses.fields(TrainConfig):
        opt = f.metadata["option"]
        assert opt.flag in rows, f"README's table lacks {opt.flag}"
        if opt.kind in (int, float) and f.default is not None:
            shown = f"{f.default:g}" if opt.kind is float else str(f.default)
            assert rows[opt.flag] == shown, (opt.flag, rows[opt.flag], shown)
