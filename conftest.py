"""pytest, for the whole checkout: the doctests of the TRL integration run only where TRL is
installed (TRL 1.16 needs Python >= 3.11, which the ``dev`` extra respects)."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("trl") else ["aot_losses/integrations/trl/*"]
