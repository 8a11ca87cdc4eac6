"""pytest: the doctests of an integration run only where its framework is installed (TRL 1.16
needs Python >= 3.11, which the ``dev`` extra respects)."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("trl") else ["trl.py"]
