"""``configs/data/<name>.yaml``, written from the dataset catalogue (one file per dataset, never edited by hand).

``python -m stm3_lightning.data.configs`` rewrites the files; ``--check`` exits 1 naming every file that differs
from the catalogue (a test runs the same comparison).
"""

from __future__ import annotations

import argparse
import math
import textwrap
from dataclasses import asdict
from pathlib import Path

from stm3_lightning.config.compose import config_dir
from stm3_lightning.config.schema import SyntheticConfig
from stm3_lightning.data.catalogue import DATASETS
from stm3_lightning.data.specs import DatasetSpec

RELEASE_NOTE = (
    "Files, sources and checksums: `stm3 datasets`. Protocol: reference §5; 96 -> 96 is the STM3 README's setting "
    "(lag and horizon are CLI arguments in the release)."
)
GENERATED_NOTE = (
    "Written from src/stm3_lightning/data/datasets.py by `python -m stm3_lightning.data.configs`; edit the "
    "catalogue, not this file."
)


def _yaml(value: object) -> str:
    """``value`` as a YAML flow scalar or list."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def render(spec: DatasetSpec) -> str:
    """The text of ``configs/data/<spec.name>.yaml``."""
    p = spec.protocol
    notes = [p.summary] if spec.generated else [p.summary, RELEASE_NOTE]
    header = [line for note in (*notes, GENERATED_NOTE) for line in textwrap.wrap(note, 108)]
    split = f"{{mode: {p.split_mode}, ratios: {_yaml(p.split_ratios)}, borders: {_yaml(p.split_borders)}}}"
    body = {
        "name": spec.name,
        "input_len": p.input_len,
        "horizon": p.horizon,
        "split": split,
        "scaler": f"{{kind: standard, per_node: {_yaml(p.per_node)}}}",
        "real_value": _yaml(p.real_value),
        # a generated series has the period it is generated with: data.synthetic.* is its one knob
        "steps_per_day": "${.synthetic.steps_per_day}" if spec.generated else spec.steps_per_day,
        "channel": spec.channel,
        "null_val": _yaml(p.null_val),
        "time_features": "true",
        "batch_size": p.batch_size,
        "eval_batch_size": p.eval_batch_size,
    }
    lines = [f"# {line}" for line in header] + [f"{key}: {value}" for key, value in body.items()]
    if spec.generated:
        lines += ["synthetic:", *(f"  {k}: {_yaml(v)}" for k, v in asdict(SyntheticConfig()).items())]
    return "\n".join(lines) + "\n"


def stale_files(folder: Path) -> list[Path]:
    """Files of ``folder`` that differ from the catalogue, are missing, or name no dataset."""
    stale = [
        folder / f"{name}.yaml"
        for name, spec in DATASETS.items()
        if _read(folder / f"{name}.yaml") != render(spec)
    ]
    return stale + [p for p in sorted(folder.glob("*.yaml")) if p.stem not in DATASETS]


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def write_all(folder: Path) -> list[Path]:
    """Write every dataset's file into ``folder``; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.yaml" for name in DATASETS]
    for path, spec in zip(paths, DATASETS.values(), strict=True):
        path.write_text(render(spec))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is stale")
    args = parser.parse_args(argv)
    folder = config_dir() / "data"
    if args.check:
        stale = stale_files(folder)
        for path in stale:
            print(f"{path} differs from the catalogue; run `python -m stm3_lightning.data.configs`.")
        return 1 if stale else 0
    for path in write_all(folder):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
