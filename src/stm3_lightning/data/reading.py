"""Finding and reading a dataset's files: the target series ``[T, N]`` and its graph.

:func:`prepare_files` is what Lightning's ``prepare_data`` does (once per node, rank 0): make a series file present,
downloading a pinned, checksummed mirror when none is and that is allowed, and verify the checksums of small
canonical files, without loading the array. :func:`read_series` is what ``setup`` does on every rank: read the
first accepted file with :mod:`stm3_lightning.data.formats` (or generate the synthetic series); it never downloads.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stm3_lightning.config.schema import DataConfig
from stm3_lightning.data import formats, graph_formats
from stm3_lightning.data.catalogue import get_spec
from stm3_lightning.data.download import download_dataset, verify_checksum
from stm3_lightning.data.errors import DataWarning, FormatError, MissingDataError
from stm3_lightning.data.specs import DataFile, DatasetSpec
from stm3_lightning.data.synthetic import generate_synthetic


@dataclass
class SeriesData:
    """A loaded dataset: the target channel, its graph if any, and where they came from.

    values: ``[T, N]`` float32, as stored (NaNs and zeros kept). adjacency: ``[N, N]`` float32 or ``None``.
    """

    values: np.ndarray
    adjacency: np.ndarray | None
    spec: DatasetSpec
    source: Path
    adjacency_source: Path | None = None
    channel: int = 0


def prepare_files(spec: DatasetSpec, data_dir: str | Path, download: bool) -> DataFile | None:
    """Make a series file of ``spec`` present under ``data_dir`` and verify it; returns it (``None`` if generated).

    Downloads a mirror when none is present and ``download`` is true; raises :class:`MissingDataError` otherwise.
    """
    if spec.generated:
        return None
    root = Path(data_dir).expanduser()
    file = spec.find_file(root)
    if file is None and download and spec.downloads:
        download_dataset(spec, root)
        file = spec.find_file(root)
    if file is None:
        raise spec.missing_error(root, download)
    if file.verify_on_load and file.checksum:
        verify_checksum(
            root / file.path,
            file.checksum,
            fix=f"delete it (it is downloaded again) or restore it from {file.url}",
        )
    return file


def _read_values(spec: DatasetSpec, file: DataFile, path: Path, channel: int) -> np.ndarray:
    """Target series ``[T, N]`` float32 of ``file``, checked against the spec's node and step counts."""
    array = formats.read_array(path, file.fmt, file.key, file.last_column)
    values = formats.to_series(array, path, file.layout, channel, spec.steps_per_day, file.ranks)
    if values.shape[1] != spec.num_nodes:
        raise FormatError(
            f"{path} has {values.shape[1]} nodes but {spec.title} has {spec.num_nodes}; it is not the "
            f"{spec.title} file: replace it with the published one."
        )
    if spec.num_steps is not None and values.shape[0] != spec.num_steps:
        warnings.warn(
            DataWarning(
                f"{path} has {values.shape[0]} steps where the published {spec.title} has {spec.num_steps}; "
                "results will not be comparable with the literature."
            ),
            stacklevel=3,
        )
    return values


def load_adjacency(spec: DatasetSpec, data_dir: str | Path) -> tuple[np.ndarray | None, Path | None]:
    """The first present adjacency ``[N, N]`` float32 of ``spec`` and its path, or ``(None, None)``."""
    root = Path(data_dir).expanduser()
    graph = next((g for g in spec.adjacency if (root / g.path).is_file()), None)
    if graph is None:
        return None, None
    path = root / graph.path
    if graph.fmt == "edges":
        ids = root / graph.ids.path if graph.ids is not None else None
        if graph.ids is not None and ids is not None and not ids.is_file():
            raise MissingDataError(
                f"{path} names sensors by id, so it needs {ids} (one id per line, in node order); place it there "
                f"(from {graph.ids.url or spec.source}) or remove {graph.name}."
            )
        adjacency = graph_formats.read_edge_list(path, spec.num_nodes, ids)
    else:
        adjacency = np.asarray(graph_formats.read_adjacency_pickle(path), dtype=np.float32)
    if adjacency.shape != (spec.num_nodes, spec.num_nodes):
        raise FormatError(
            f"{path} is a {adjacency.shape} matrix but {spec.title} has {spec.num_nodes} nodes; use the published "
            "graph file or remove it."
        )
    return adjacency, path


def _read_file(spec: DatasetSpec, root: Path, channel: int | None) -> SeriesData:
    """Read the first present series file of ``spec`` under ``root`` (never downloads)."""
    file = spec.find_file(root)
    if file is None:
        raise spec.missing_error(root, download=False)
    channel = spec.channel if channel is None else channel
    path = root / file.path
    values = _read_values(spec, file, path, channel)
    adjacency, adjacency_path = load_adjacency(spec, root)
    return SeriesData(values, adjacency, spec, path, adjacency_path, channel)


def load_series(
    name: str, data_dir: str | Path, download: bool = True, channel: int | None = None
) -> SeriesData:
    """Prepare (see :func:`prepare_files`) and read the files of dataset ``name`` under ``data_dir``.

    ``channel`` overrides the spec's default channel (Milan: 0 sms, 1 call, 2 internet). Raises a
    :class:`DataError` subclass with a one-sentence fix when the data is missing or unreadable.
    """
    spec = get_spec(name)
    root = Path(data_dir).expanduser()
    prepare_files(spec, root, download)
    return _read_file(spec, root, channel)


def read_series(cfg: DataConfig, data_dir: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The configured dataset's raw series, after :func:`prepare_files` (generated datasets need none).

    Returns: ``values: [T, N]`` float32 in original units, ``adjacency: [N, N]`` or ``None``.
    """
    spec = get_spec(cfg.name)
    if spec.generated:
        return generate_synthetic(cfg.synthetic)
    series = _read_file(spec, Path(data_dir).expanduser(), cfg.channel)
    return series.values, series.adjacency
