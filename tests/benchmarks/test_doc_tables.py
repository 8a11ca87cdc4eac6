"""The tables of docs/benchmarks.md and docs/alignment.md are what their result files say
(``python -m scripts.doc_tables`` rebuilds them), and a benchmark run writes into the committed
results and page only when asked (``--write``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

for _module in ("matplotlib", "transformers", "peft", "accelerate", "tqdm"):  # the studies
    pytest.importorskip(_module)

from benchmarks.common import DOCS, RESULTS, ROOT  # noqa: E402
from scripts.doc_tables import DOCS_DIR, PAGES, stale  # noqa: E402

pytestmark = pytest.mark.slow


def test_pages_are_what_their_results_say() -> None:
    differ = stale()
    assert not differ, "stale pages, run python -m scripts.doc_tables:\n" + "\n".join(
        differ.values()
    )


def test_a_result_that_disagrees_with_its_page_is_caught(tmp_path: Path) -> None:
    """One number changed in a benchmark's JSON and one in a study's: both pages are stale."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    sort = json.loads((results / "sort_cpu.json").read_text())
    sort["results"][0]["median_s"] *= 2
    (results / "sort_cpu.json").write_text(json.dumps(sort))
    study = json.loads((results / "alignment_quick.json").read_text())
    study["wall_s"] += 600
    (results / "alignment_quick.json").write_text(json.dumps(study))
    differ = stale(DOCS_DIR, results)
    assert set(differ) == set(PAGES)
    assert "| 1 | 64 | hard |" in differ["benchmarks.md"]
    assert "minutes in all" in differ["alignment.md"]


def test_a_benchmark_writes_into_runs_unless_asked(tmp_path: Path) -> None:
    """``bench_losses`` (tiny: n = 64, 1 ms a case) with ``--out``: its JSON and a copy of the
    page with its section go there, one readable line per case; the committed files stay."""
    committed = {p: p.read_bytes() for p in (DOCS, *RESULTS.glob("losses_*.json"))}
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "benchmarks.bench_losses", "--device", "cpu"]
    result = subprocess.run(
        [*command, "--sizes", "64", "--min-run-time", "0.001", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert {p: p.read_bytes() for p in committed} == committed
    lines = result.stdout.splitlines()
    assert lines[0].startswith("losses n=64 cpu fwd+bwd: torch.sort (2, n) fwd+bwd ")
    assert "[IQR " in lines[0]
    assert lines[1].startswith("losses n=64 cpu fwd+bwd: aot_paired_loss ")
    assert lines[1].endswith("x the sort")
    payload = json.loads((out / "losses_cpu.json").read_text())
    assert [r["n"] for r in payload["results"]] == [64] * 5
    page = (out / "benchmarks.md").read_text()
    assert "| 64 | " in page and "| 65536 | " not in page.split("<!-- bench_losses:begin")[1]
    assert f"wrote {out / 'losses_cpu.json'}" in result.stdout


def test_help_shows_the_defaults() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_sort", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "(default: 0.2)" in text
    assert "runs/benchmarks)" in text
    assert "--write" in text
