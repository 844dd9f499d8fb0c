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
    """docs/commands.md's option table for `convscope train` names each option of TrainConfig
    and its default: `recipe` for an option a recipe sets (convscope.recipes.GOVERNED, whose
    TrainConfig default is None), and for the others that take a number the default TrainConfig
    declares (a recipe change once left the table behind)."""
    import dataclasses
    from pathlib import Path

    from convscope.config import TrainConfig
    from convscope.recipes import GOVERNED

    text = (Path(__file__).parent.parent / "docs" / "commands.md").read_text()
    section = text.split("### convscope train\n\n")[1]
    table = section[:section.index("\n\n")].splitlines()  # the first table after the heading
    assert table[0].startswith("| option | default |")
    rows = {}
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`").split()[0]] = cells[1].strip("`")
    for f in dataclasses.fields(TrainConfig):
        opt = f.metadata["option"]
        assert opt.flag in rows, f"docs/commands.md's table lacks {opt.flag}"
        if f.default is None and f.name in GOVERNED:
            assert rows[opt.flag] == "recipe", (opt.flag, rows[opt.flag], "recipe")
        elif opt.kind in (int, float) and f.default is not None:
            shown = f"{f.default:g}" if opt.kind is float else str(f.default)
            assert rows[opt.flag] == shown, (opt.flag, rows[opt.flag], shown)


def test_readme_commands_parse():
    """Every `convscope ...` line in README.md's code blocks parses with the real argument
    parser, and README.md stays a front door (under 250 lines)."""
    import shlex
    from pathlib import Path

    from convscope.cli import build_parser
    from convscope.errors import UsageError

    text = (Path(__file__).parent.parent / "README.md").read_text()
    assert len(text.splitlines()) < 250
    commands, in_block = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        line = line.strip()
        if in_block and line.startswith("$ "):
            line = line[2:]
        if in_block and line.startswith("convscope "):
            commands.append(line)
    assert commands, "README.md shows no convscope command"
    for command in commands:
        args = shlex.split(command, comments=True)
        try:
            build_parser().parse_args(args[1:])
        except (SystemExit, UsageError) as e:
            raise AssertionError(f"README.md: {command!r} does not parse: {e}") from None
