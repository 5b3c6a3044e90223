"""Readers for the graph files of the benchmark datasets, with the same one-sentence errors as
:mod:`stm3_lightning.data.formats`.

- ``edges``: an edge list ``from,to,cost`` (ASTGCN ``PEMS08.csv``), optionally with sensor ids mapped to rows by
  an id list (``PEMS03.txt``).
- ``pickle``: DCRNN ``adj_mx.pkl`` (``[sensor_ids, sensor_id_to_ind, adj_mx]``), read with an unpickler that only
  rebuilds lists, dicts, strings, numbers and numpy arrays (a pickle can otherwise run arbitrary code).
"""

from __future__ import annotations

import codecs
import csv
import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from stm3_lightning.data.errors import CorruptFileError, FormatError
from stm3_lightning.data.formats import REFETCH, reading

ADJACENCY_FORMATS: tuple[str, ...] = ("edges", "pickle")


def _read_id_list(path: Path, num_nodes: int) -> dict[str, int]:
    """Sensor id -> row index from a file with one id per line (ASTGCN ``PEMS03.txt``)."""
    with reading(path, "a sensor id list"):
        ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(ids) != num_nodes or len(set(ids)) != len(ids):
        raise FormatError(
            f"{path} lists {len(set(ids))} distinct sensor ids in {len(ids)} lines but the dataset has "
            f"{num_nodes} nodes; use the published id list."
        )
    return {sensor: index for index, sensor in enumerate(ids)}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _node_index(text: str, ids: dict[str, int] | None, num_nodes: int, path: Path, line: int) -> int:
    text = text.strip()
    if ids is not None:
        if text not in ids:
            raise FormatError(
                f"{path} line {line} names sensor {text!r}, which is not in the id list; fix the file."
            )
        return ids[text]
    try:
        index = int(float(text))
    except ValueError:
        raise FormatError(
            f"{path} line {line} has node {text!r}, which is not an integer; fix the file."
        ) from None
    if not 0 <= index < num_nodes:
        raise FormatError(
            f"{path} line {line} has node {index}, outside 0..{num_nodes - 1}; it is not this dataset's graph "
            "(files with sensor ids need their id list)."
        )
    return index


def read_edge_list(path: str | Path, num_nodes: int, ids_path: str | Path | None = None) -> np.ndarray:
    """Binary directed adjacency ``[N, N]`` (float32, ``A[from, to] = 1``) from a ``from,to,cost`` CSV.

    Node fields are 0-based row indices, or sensor ids mapped through ``ids_path`` (one id per line, line
    order = row order), as in ASTGCN's ``get_adjacency_matrix``. A header line is skipped; costs are ignored.
    """
    path = Path(path)
    ids = _read_id_list(Path(ids_path), num_nodes) if ids_path is not None else None
    adjacency = np.zeros((num_nodes, num_nodes), dtype=np.float32)
    with reading(path, "an edge list CSV"), path.open(newline="", encoding="utf-8") as handle:
        for line, fields in enumerate(csv.reader(handle), start=1):
            if not fields or (line == 1 and not _is_number(fields[0])):
                continue
            if len(fields) < 2:
                raise CorruptFileError(f"{path} line {line} is not 'from,to[,cost]'; {REFETCH}.")
            source = _node_index(fields[0], ids, num_nodes, path, line)
            target = _node_index(fields[1], ids, num_nodes, path, line)
            adjacency[source, target] = 1.0
    if not adjacency.any():
        raise CorruptFileError(f"{path} contains no edges; {REFETCH}.")
    return adjacency


def _numpy_attr(name: str, *modules: str) -> Any:
    """``name`` from the first importable module (numpy 2 renamed ``numpy.core`` to ``numpy._core``)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy provides none of {[f'{m}.{name}' for m in modules]}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only callables a pickled adjacency may reference: containers, scalars and numpy arrays."""
    reconstruct = _numpy_attr("_reconstruct", "numpy._core.multiarray", "numpy.core.multiarray")
    scalar = _numpy_attr("scalar", "numpy._core.multiarray", "numpy.core.multiarray")
    frombuffer = _numpy_attr("_frombuffer", "numpy._core.numeric", "numpy.core.numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    for module in ("builtins", "__builtin__"):
        for builtin in (list, dict, tuple, set, str, bytes, int, float, bool):
            allowed[(module, builtin.__name__)] = builtin
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside :func:`_allowed_globals` (so nothing can run code)."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # DCRNN pickles come from Python 2
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise FormatError(
                f"{self._path} refers to {module}.{name}, which a plain adjacency pickle never needs, so it was not "
                "loaded (unpickling can run code); use the published adj_mx.pkl or save the matrix with numpy.save."
            ) from None


def read_adjacency_pickle(path: str | Path) -> np.ndarray:
    """The square matrix ``[N, N]`` of a DCRNN-style pickle (``[sensor_ids, sensor_id_to_ind, adj_mx]``).

    A bare pickled array is accepted too. Only lists, dicts, strings, numbers and numpy arrays are rebuilt.
    """
    path = Path(path)
    with reading(path, "a pickle file"), path.open("rb") as handle:
        obj = _RestrictedUnpickler(handle, path).load()
    candidates = list(obj) if isinstance(obj, list | tuple) else [obj]
    squares = [
        a for a in candidates if isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[0] == a.shape[1]
    ]
    if not squares:
        raise FormatError(
            f"{path} holds no square matrix (expected [sensor_ids, sensor_id_to_ind, adj_mx] as DCRNN's "
            "adj_mx.pkl); use the published file."
        )
    return squares[-1]
