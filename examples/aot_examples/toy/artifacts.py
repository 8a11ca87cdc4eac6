"""Preparing the embedded task once: the SFT reference and its preference data, cached."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .preferences import DATA_KINDS, build_preference_data
from .reference import pretrain_reference
from .task import ToyConfig, make_splits

#: The prompt splits that get preference data.
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Artifacts:
    """A prepared task: its config, the SFT reference and the preference data."""

    config: ToyConfig
    reference_dir: Path
    data_dir: Path
    data_stats: dict[str, int]

    @property
    def cache_dir(self) -> Path:
        return self.data_dir.parent

    @property
    def config_file(self) -> Path:
        """The task's config as JSON, what ``--toy-config`` reads (the cache's stamp)."""
        return self.cache_dir / "toy_config.json"

    def dataset(self, kind: str, split: str) -> Path:
        """``kind`` one of :data:`~.preferences.DATA_KINDS` (``"paired"``: best vs worst,
        ``"unpaired"``: every sample labelled by exactness, ``"noisy"``, ``"thumbs"``), ``split``
        ``"train"`` or ``"eval"``."""
        return self.data_dir / f"{kind}_{split}.jsonl"


def prepare(cfg: ToyConfig, cache_dir: str | Path) -> Artifacts:
    """Build (or reuse from ``cache_dir``) the reference model and the preference data.

    The cache is valid when ``cache_dir/toy_config.json`` equals ``cfg`` and every kind of
    data is there (a cache written before a construction was added lacks its files); otherwise
    it is rebuilt in place.
    """
    cache = Path(cache_dir)
    stamp = cache / "toy_config.json"
    reference_dir, data_dir = cache / "reference", cache / "data"
    stats_file = data_dir / "stats.json"
    wanted = dataclasses.asdict(cfg)
    files = [data_dir / f"{kind}_{split}.jsonl" for kind in DATA_KINDS for split in SPLITS]
    valid = stamp.exists() and json.loads(stamp.read_text()) == wanted and stats_file.exists()
    if not (valid and all(f.exists() for f in files)):
        stamp.unlink(missing_ok=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        splits = make_splits(cfg)
        pretrain_reference(cfg, splits, reference_dir)
        stats = build_preference_data(cfg, splits, reference_dir, data_dir)
        stats_file.write_text(json.dumps(stats, indent=2))
        stamp.write_text(json.dumps(wanted, indent=2))
    return Artifacts(cfg, reference_dir, data_dir, json.loads(stats_file.read_text()))
