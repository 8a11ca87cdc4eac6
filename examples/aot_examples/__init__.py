"""Shared pieces of ``examples/align.py``: data, models, reports, the embedded task."""
