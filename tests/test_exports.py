"""The public API is exactly what the public modules export."""

from __future__ import annotations

import importlib

import pytest

PUBLIC_MODULES = [
    "periodic",
    "periodic.cron",
    "periodic.events",
    "periodic.exceptions",
    "periodic.peers",
    "periodic.reminders",
    "periodic.stores",
    "periodic.testing",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_unique_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported)
    assert len(exported) == len(set(exported))
    for attr in exported:
        assert hasattr(module, attr), f"{name}.{attr} is in __all__ but missing"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_no_public_name_is_left_out_of_all(name: str) -> None:
    module = importlib.import_module(name)
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and attr != "TYPE_CHECKING"
        and getattr(value, "__module__", name).startswith("periodic")
        and not isinstance(value, type(importlib))
    }
    assert public <= set(module.__all__)


def test_public_objects_have_docstrings() -> None:
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        assert module.__doc__
        for attr in module.__all__:
            value = getattr(module, attr)
            if callable(value) and attr != "Handler":
                assert value.__doc__, f"{name}.{attr} has no docstring"


def test_version() -> None:
    import periodic

    assert isinstance(periodic.__version__, str)
