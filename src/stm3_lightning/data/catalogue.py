"""The dataset catalogue, the single source of truth for each dataset: lookup by name or alias, model sizes
before any data is read, the catalogue's self-check and the ``stm3 datasets`` listing.

The specs themselves are in :mod:`stm3_lightning.data.datasets`; ``configs/data/<name>.yaml`` is written from
them (:mod:`stm3_lightning.data.configs`).
"""

from __future__ import annotations

import math
from pathlib import Path

from stm3_lightning.config.schema import DataConfig
from stm3_lightning.data import formats, graph_formats
from stm3_lightning.data.datasets import DATASETS
from stm3_lightning.data.download import parse_checksum
from stm3_lightning.data.errors import DataError
from stm3_lightning.data.specs import DatasetSpec
from stm3_lightning.types import DataInfo

__all__ = ["DATASETS", "data_info", "datasets_table", "get_spec", "spec_problems"]

# --------------------------------------------------------------------------------------------------- lookup


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name`` (case-insensitive; aliases such as ``PEMSD8`` or ``METR-LA`` accepted)."""
    key = _normalise(name)
    for spec in DATASETS.values():
        if key == spec.name or key in {_normalise(a) for a in spec.aliases}:
            return spec
    raise DataError(
        f"Unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))} (see `stm3 datasets`)."
    )


def data_info(cfg: DataConfig) -> DataInfo:
    """The shapes a model is built for under the data config ``cfg``, without reading any data."""
    return get_spec(cfg.name).data_info(cfg)


def spec_problems(spec: DatasetSpec) -> list[str]:
    """Inconsistencies of ``spec`` (programming errors of the catalogue, not user errors); empty when sound."""
    problems = [
        f"unknown format or layout for {f.path}"
        for f in spec.files
        if f.fmt not in formats.ARRAY_FORMATS or f.layout not in formats.LAYOUTS
    ]
    problems += [
        f"unknown graph format for {g.path}"
        for g in spec.adjacency
        if g.fmt not in graph_formats.ADJACENCY_FORMATS
    ]
    problems += [
        f"{g.ids.path} is not an id list" for g in spec.adjacency if g.ids is not None and g.ids.fmt != "ids"
    ]
    for file in (*spec.files, *spec.downloads, *spec.adjacency):
        if (file.url is None) != (file.checksum is None):
            problems.append(f"{file.path} needs both a url and a checksum, or neither")
        elif file.checksum is not None:
            try:
                parse_checksum(file.checksum)
            except ValueError as exc:
                problems.append(str(exc))
    if any(f not in spec.files or not f.downloadable for f in spec.downloads):
        problems.append("every download must be an accepted, checksummed series file")
    if spec.generated == bool(spec.files):
        problems.append("a dataset is either generated or read from files")
    ratios = spec.protocol.split_ratios
    if not spec.protocol.summary or len(ratios) != 3 or not math.isclose(sum(ratios), 1.0):
        problems.append("the protocol needs a summary and three split ratios summing to 1")
    return problems


def _check_catalogue() -> None:
    """Fail at import if a spec is inconsistent (a programming error, not a user one)."""
    for spec in DATASETS.values():
        if problems := spec_problems(spec):
            raise ValueError(f"{spec.name}: {'; '.join(problems)}.")


_check_catalogue()


# --------------------------------------------------------------------------------------------------- listing


def dataset_status(spec: DatasetSpec, data_dir: str | Path) -> str:
    """``generated``, ``present (<file>)``, ``missing (downloadable)`` or ``missing`` under ``data_dir``."""
    if spec.generated:
        return "generated"
    found = spec.find_file(data_dir)
    if found is not None:
        return f"present ({found.path})"
    return "missing (downloadable)" if spec.downloads else "missing"


def datasets_table(data_dir: str | Path | None = None) -> str:
    """The text ``stm3 datasets`` prints: one block per dataset with N, T, frequency, files and source.

    With ``data_dir`` each block also says whether the data is present there (and which file would be read).
    """
    header = f"{'name':<15} {'N':>4} {'T':>7} {'freq':<8} {'status' if data_dir is not None else ''}".rstrip()
    lines = [header, "-" * max(len(header), 60)]
    for spec in DATASETS.values():
        steps = f"{spec.num_steps}" if spec.num_steps is not None else "?"
        status = dataset_status(spec, data_dir) if data_dir is not None else ""
        lines.append(f"{spec.name:<15} {spec.num_nodes:>4} {steps:>7} {spec.freq:<8} {status}".rstrip())
        files = " | ".join(spec.paths) or "none (data.synthetic.* sets its size)"
        graphs = " | ".join(g.path for g in spec.adjacency)
        lines.append(f"    files: {files}" + (f"   graph: {graphs}" if graphs else ""))
        fetch = f"; auto-download: {', '.join(f.name for f in spec.downloads)}" if spec.downloads else ""
        lines.append(f"    from: {spec.source}{fetch}")
        lines.append(f"    licence: {spec.licence}; cite: {spec.citation}")
    if data_dir is not None:
        lines.append(f"data_dir: {Path(data_dir).expanduser().resolve()}")
    return "\n".join(lines)
