"""docs/api.md is generated from the code (``python -m scripts.api_docs``): it cannot drift."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

import pytest

import aot_losses
from scripts.api_docs import API, MODULES, render

for _optional in ("trl", "hypothesis", "scipy"):  # the testing kit and the TRL integration
    pytest.importorskip(_optional)


def test_api_page_is_what_the_code_says() -> None:
    assert API.read_text() == render(), "docs/api.md is stale: run python -m scripts.api_docs"


def test_every_module_declares_its_names() -> None:
    """Every module of the package has a real ``__all__`` (a list of names it defines or
    imports), and every public module is on the API page."""
    names = [
        info.name
        for info in pkgutil.walk_packages(aot_losses.__path__, "aot_losses.")
        if not info.name.endswith("conftest")
    ]
    for name in ["aot_losses", *names]:
        module = importlib.import_module(name)
        assert isinstance(getattr(module, "__all__", None), list), name
        missing = [attr for attr in module.__all__ if not hasattr(module, attr)]
        assert not missing, (name, missing)
    public = {n for n in names if not any(part.startswith("_") for part in n.split("."))}
    assert public | {"aot_losses"} == set(MODULES), "add the new public module to MODULES"
