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
