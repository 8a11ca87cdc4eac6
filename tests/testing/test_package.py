"""aot_losses.testing as a package: the same public names, optional for aot_losses, and oracles
that work without hypothesis."""

from __future__ import annotations

import subprocess
import sys

import pytest

import aot_losses.testing as kit
from aot_losses.testing import checkers, oracles, reference_ot_1d, strategies

#: The kit's public names (DESIGN.md's testing kit contract and what came with it).
NAMES = {
    "OTCase", "check_aot_loss", "check_ot_1d", "check_soft_sort", "ot_cases",
    "reference_aot_loss", "reference_ot_1d", "reference_ot_grad", "reference_ot_plan",
    "reference_penalty", "reference_penalty_derivative", "reference_soft_rank",
    "reference_soft_sort", "trl_aot_loss",
}  # fmt: skip

#: Makes ``import hypothesis`` fail as if it were not installed.
NO_HYPOTHESIS = """
import importlib.abc, sys
class NoHypothesis(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hypothesis":
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, NoHypothesis())
"""


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_the_public_names_are_the_modules_names():
    assert set(kit.__all__) == NAMES
    modules = (oracles, strategies, checkers)
    assert set().union(*(m.__all__ for m in modules)) == NAMES
    for module in modules:
        for name in module.__all__:
            assert getattr(kit, name) is getattr(module, name), name
    assert set(dir(kit)) >= NAMES


def test_the_kit_is_optional_and_loads_hypothesis_on_first_use_of_a_checker():
    out = run(
        "import sys, aot_losses\n"
        "def loaded(*names): return sorted(m for m in names if m in sys.modules)\n"
        "print(loaded('aot_losses.testing', 'hypothesis', 'scipy'))\n"
        "import aot_losses.testing as kit\n"
        "print(loaded('hypothesis', 'scipy'))\n"
        "kit.check_ot_1d\n"
        "print(loaded('hypothesis', 'aot_losses.testing.checkers'))"
    )
    loaded = ["[]", "[]", "['aot_losses.testing.checkers', 'hypothesis']"]
    assert out.stdout.splitlines() == loaded, out.stderr


def test_without_hypothesis_the_oracles_work_and_the_checkers_say_how_to_install_it():
    out = run(
        NO_HYPOTHESIS + "from aot_losses.testing import reference_ot_1d, reference_soft_sort\n"
        "from aot_losses.testing.oracles import trl_aot_loss\n"
        "print(reference_ot_1d([3.0, 1.0], [0.0, 2.0, 4.0], 'least_squares', beta=1.0))\n"
        "print(reference_soft_sort([3.0, 1.0, 2.0], 2.0).tolist())\n"
        "print(round(trl_aot_loss([-5.0, -7.0], [-9.0, -8.0], [-6.0, -7.0], [-8.0, -8.0], "
        "beta=1.0), 4))\n"
        "for statement in ('from aot_losses.testing import check_ot_1d',\n"
        "                  'from aot_losses.testing import ot_cases',\n"
        "                  'import aot_losses.testing.strategies',\n"
        "                  'import aot_losses.testing.checkers'):\n"
        "    try:\n"
        "        exec(statement)\n"
        "    except ImportError as error:\n"
        "        print(error)\n"
    )
    lines = out.stdout.splitlines()
    assert lines[:3] == ["2.0", "[1.5, 2.0, 2.5]", "0.41"], out.stderr
    assert len(lines) == 7, out.stderr
    for message in lines[3:]:
        assert message.startswith("aot_losses.testing.") and "needs hypothesis" in message
        assert 'pip install -e ".[testing]"' in message
        assert 'pip install "aot-losses[testing] @ git+' in message


def test_without_scipy_the_lp_method_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    with pytest.raises(ImportError, match=r"needs scipy .*pip install -e \"\.\[testing\]\""):
        reference_ot_1d([0.0], [1.0], "hinge", method="lp")
