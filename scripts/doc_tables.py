"""Rebuild the tables of the docs that come from result files, without measuring anything.

    python -m scripts.doc_tables            # rewrite the generated sections from the JSON
    python -m scripts.doc_tables --check    # exit 1 if a page differs from its results

``docs/benchmarks.md``: the ``bench_sort`` and ``bench_losses`` sections (CPU, and CUDA: a CUDA
section whose JSON is absent says so) and ``bench_distributed``, from
``benchmarks/results/{sort,losses}_{cpu,cuda}.json`` and ``distributed_cpu.json``.
``docs/alignment.md``: the ``alignment``, ``alignment_quick``, ``alignment_regimes``,
``alignment_regimes_quick``, ``alignment_mechanism`` and ``instructions_{cpu,gpu}`` sections
and their plots in ``docs/img/``, from the JSON of the same names, by the studies' own
``report`` (what their ``--report`` runs). Only the text between a
section's ``<!-- key:begin -->`` and ``<!-- key:end -->`` markers is generated; the prose
around it is written by hand. A test (``tests/benchmarks/test_doc_tables.py``) fails when a
committed page differs from what its results make of it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import (
    alignment,
    alignment_mechanism,
    alignment_regimes,
    bench_distributed,
    bench_losses,
    bench_sort,
    instructions,
)
from benchmarks.common import RESULTS, ROOT, replace_section, section_key

__all__ = ["DOCS_DIR", "PAGES", "benchmark_sections", "main", "rebuild", "stale"]

DOCS_DIR = ROOT / "docs"
#: The pages with generated sections.
PAGES = ("benchmarks.md", "alignment.md")
#: The studies of docs/alignment.md: the module whose ``report`` writes each section.
STUDIES = (
    (alignment, "alignment"),
    (alignment, "alignment_quick"),
    (alignment_regimes, "alignment_regimes"),
    (alignment_regimes, "alignment_regimes_quick"),
    (alignment_mechanism, "alignment_mechanism"),
    (instructions, "instructions_cpu"),
    (instructions, "instructions_gpu"),
)
NOT_MEASURED = (
    "Not yet measured: `bash benchmarks/gpu_check.sh` on a machine with a CUDA GPU writes this "
    "section ([The GPU check](#the-gpu-check))."
)


def _load(path: Path) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(path.read_text())
    return payload


def benchmark_sections(results: Path = RESULTS) -> dict[str, str]:
    """The generated sections of docs/benchmarks.md, by marker, from the JSON in ``results``."""
    sections: dict[str, str] = {}
    benchmarks = (
        ("sort", bench_sort.section, "Sort backends"),
        ("losses", bench_losses.section, "Losses"),
    )
    for device in ("cpu", "cuda"):
        for name, section, title in benchmarks:
            path = results / f"{name}_{device}.json"
            markdown = (
                section(_load(path))
                if path.exists()
                else f"## {title}{' on CUDA' if device == 'cuda' else ''}\n\n{NOT_MEASURED}"
            )
            sections[section_key(f"bench_{name}", device)] = markdown
    path = results / "distributed_cpu.json"
    if path.exists():
        sections["bench_distributed"] = bench_distributed.section(_load(path))
    return sections


def rebuild(docs: Path = DOCS_DIR, results: Path = RESULTS) -> None:
    """Rewrite the generated sections of the pages in the folder ``docs`` (and the studies'
    plots in ``docs``/img) from the JSON in ``results``."""
    page = docs / "benchmarks.md"
    text = page.read_text()
    for key, markdown in benchmark_sections(results).items():
        text = replace_section(text, key, markdown)
    page.write_text(text)
    for module, name in STUDIES:
        path = results / f"{name}.json"
        if path.exists():
            module.report(_load(path), name, docs)


def stale(docs: Path = DOCS_DIR, results: Path = RESULTS) -> dict[str, str]:
    """The pages of ``docs`` that differ from what the JSON in ``results`` makes of them, each
    with the start of its unified diff (empty when every page is up to date)."""
    differ: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in PAGES:
            shutil.copyfile(docs / name, Path(tmp) / name)
        rebuild(Path(tmp), results)
        for name in PAGES:
            now, then = (docs / name).read_text(), (Path(tmp) / name).read_text()
            if now != then:
                diff = difflib.unified_diff(
                    now.splitlines(),
                    then.splitlines(),
                    f"{name} (page)",
                    f"{name} (results)",
                    lineterm="",
                )
                differ[name] = "\n".join(list(diff)[:40])
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a page differs from its results"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON")
    parser.add_argument("--docs", type=Path, default=DOCS_DIR, help="folder of the pages")
    args = parser.parse_args()
    if not args.check:
        rebuild(args.docs, args.results)
        return
    differ = stale(args.docs, args.results)
    for diff in differ.values():
        print(diff, file=sys.stderr)
    if differ:
        print(
            f"out of date: {', '.join(differ)}: run python -m scripts.doc_tables", file=sys.stderr
        )
        raise SystemExit(1)


if __name__ == "__main__":
    main()
