"""Readers for the file formats the benchmark datasets are published in.

Every reader takes a path and returns numpy arrays; every problem with the file becomes a
:class:`~stm3_lightning.data.errors.DataError` subclass with a one-sentence message:
:class:`CorruptFileError` when the file cannot be parsed (truncated, corrupt, not the format its name says) and
:class:`FormatError` when it parses but holds the wrong thing (missing key, wrong rank or node count, pickled
objects). Values are returned as stored, NaNs included: deciding what to do with them is the datamodule's job.

Formats:

- ``npz`` / ``npy``: numpy archives (ASTGCN ``PEMS08.npz``: key ``data``, ``[T, N, C]``), always loaded with
  ``allow_pickle=False``.
- ``mat``: MATLAB v5 (``scipy.io.loadmat``) or v7.3 (HDF5, read with h5py and axes reversed to MATLAB order).
- ``hdf``: a pandas ``DataFrame`` saved with ``to_hdf(format="fixed")`` (DCRNN ``metr-la.h5``), read with h5py.
- ``csv``: a wide table whose first column is a timestamp and every other column one series (ETT, Electricity).

Graph files (edge lists, DCRNN pickles) are read by :mod:`stm3_lightning.data.graph_formats`.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from stm3_lightning.data.errors import CorruptFileError, DataError, FormatError, MissingDataError

ARRAY_FORMATS: tuple[str, ...] = ("npz", "npy", "mat", "hdf", "csv")
LAYOUTS: tuple[str, ...] = ("TNC", "SDN")

REFETCH = "it is truncated or corrupt: delete it and download or copy it again"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


@contextmanager
def reading(path: Path, kind: str) -> Iterator[None]:
    """Turn any parser exception raised inside the block into a one-sentence :class:`DataError`.

    Parsers (zipfile, numpy, scipy, h5py, csv) raise many unrelated exception types on bad input, so anything
    that is not already a ``DataError`` is reported as a corrupt file; pickled payloads get their own message.
    """
    if not path.is_file():
        raise MissingDataError(f"{path} does not exist; place the file there or fix data_dir.")
    try:
        yield
    except (DataError, MemoryError, KeyboardInterrupt):
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise FormatError(
                f"{path} contains pickled Python objects, which are never loaded (unpickling can run code); "
                "re-save the data as a plain numeric array with numpy.save or numpy.savez."
            ) from exc
        raise CorruptFileError(f"Cannot read {path} as {kind} ({_one_line(exc)}); {REFETCH}.") from exc
    except Exception as exc:
        detail = f"{type(exc).__name__}: {_one_line(exc)}"
        raise CorruptFileError(f"Cannot read {path} as {kind} ({detail}); {REFETCH}.") from exc


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(8)


def _not_numpy(path: Path, head: bytes, kind: str) -> CorruptFileError:
    hint = " (it looks like an HTML page, e.g. a failed download)" if head.lstrip().startswith(b"<") else ""
    return CorruptFileError(f"{path} is not {kind}: it starts with {head!r}{hint}; {REFETCH}.")


def read_npz(path: str | Path, key: str = "data") -> np.ndarray:
    """The array stored under ``key`` in a ``.npz`` archive."""
    path = Path(path)
    with reading(path, "a .npz archive"):
        head = _head(path)
        if head.startswith(_NPY_MAGIC):
            raise FormatError(
                f"{path} is a single .npy array, not a .npz archive; rename it to .npy or save it with "
                f"numpy.savez(path, {key}=array)."
            )
        if not head.startswith(_ZIP_MAGICS):
            raise _not_numpy(path, head, "a .npz archive")
        # numpy leaks the descriptor when the zip is corrupt if it opens the file itself, so open it here
        with path.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            if key not in archive.files:
                raise FormatError(
                    f"{path} has no array named {key!r} (it holds {sorted(archive.files)}); use the published "
                    f"file, or re-save the series with numpy.savez(path, {key}=array)."
                )
            return archive[key]


def read_npy(path: str | Path) -> np.ndarray:
    """The array stored in a ``.npy`` file."""
    path = Path(path)
    with reading(path, "a .npy array"):
        head = _head(path)
        if head.startswith(_ZIP_MAGICS):
            raise FormatError(
                f"{path} is a .npz archive, not a single .npy array; save the series with numpy.save(path, array)."
            )
        if not head.startswith(_NPY_MAGIC):
            raise _not_numpy(path, head, "a .npy array")
        with path.open("rb") as handle:
            return np.load(handle, allow_pickle=False)


def _mat_variables(path: Path) -> list[str]:
    import scipy.io

    return sorted(name for name, _shape, _cls in scipy.io.whosmat(path))


def _pick_variable(path: Path, key: str | None, names: list[str]) -> str:
    """``key`` if present, else the only variable of the file."""
    if key is None and len(names) == 1:
        return names[0]
    if key is None or key not in names:
        wanted = f"a variable named {key!r}" if key else "exactly one variable"
        raise FormatError(f"{path} does not hold {wanted} (it holds {names}); use the published .mat file.")
    return key


def _read_mat73(path: Path, key: str | None) -> np.ndarray:
    """A variable of a MATLAB v7.3 (HDF5) file, with axes reversed back to MATLAB's order."""
    import h5py

    with h5py.File(path, "r") as handle:
        names = sorted(name for name, node in handle.items() if isinstance(node, h5py.Dataset))
        return handle[_pick_variable(path, key, names)][()].transpose()


def read_mat(path: str | Path, key: str | None = None) -> np.ndarray:
    """Variable ``key`` (or the only variable) of a MATLAB ``.mat`` file, v5 or v7.3."""
    import scipy.io

    path = Path(path)
    with reading(path, "a MATLAB .mat file"):
        try:
            names = _mat_variables(path)
        except NotImplementedError:  # v7.3 files are HDF5 containers
            return _read_mat73(path, key)
        name = _pick_variable(path, key, names)
        return scipy.io.loadmat(path, variable_names=[name])[name]


def _text(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8", "replace")
    return str(value)


def _labels(dataset: Any) -> list[str]:
    return [_text(v) for v in dataset[()].tolist()]


def _block_values(path: Path, group: Any, index: int, n_rows: int) -> tuple[list[str], np.ndarray]:
    """Item labels and values ``[T, n_items]`` of pandas block ``index``."""
    items = _labels(group[f"block{index}_items"])
    node = group[f"block{index}_values"]
    values = node[()]
    transposed = bool(node.attrs.get("transposed", True))
    if values.ndim != 2:
        raise FormatError(f"{path} block {index} has rank {values.ndim}, expected a 2-D table of values.")
    # pandas stores blocks row-major ([T, n_items], attribute transposed=1); older writers used [n_items, T].
    row_major = values.shape == (n_rows, len(items)) and (n_rows != len(items) or transposed)
    if not row_major and values.shape == (len(items), n_rows):
        values = values.T
    elif not row_major:
        raise CorruptFileError(
            f"{path} block {index} has shape {values.shape} for {n_rows} rows and {len(items)} columns; "
            f"{REFETCH}."
        )
    if values.dtype.kind not in "fiub":
        raise FormatError(
            f"{path} column block {index} is not numeric ({values.dtype}); keep only the numeric sensor columns."
        )
    return items, values


def _frame_values(path: Path, group: Any) -> np.ndarray:
    """Values ``[T, N]`` of a pandas fixed-format frame group, columns in ``axis0`` order."""
    columns = _labels(group["axis0"])
    n_rows = group["axis1"].shape[0]
    position = {label: i for i, label in enumerate(columns)}
    out = np.full((n_rows, len(columns)), np.nan, dtype=np.float64)
    filled = np.zeros(len(columns), dtype=bool)
    for index in range(int(group.attrs.get("nblocks", 0))):
        items, values = _block_values(path, group, index, n_rows)
        unknown = [item for item in items if item not in position]
        if unknown:
            raise CorruptFileError(f"{path} stores values for unknown columns {unknown[:3]}; {REFETCH}.")
        cols = [position[item] for item in items]
        out[:, cols] = values
        filled[cols] = True
    if not filled.all():
        raise CorruptFileError(f"{path} has {int((~filled).sum())} columns without values; {REFETCH}.")
    return out


def read_pandas_hdf(path: str | Path, key: str | None = None) -> np.ndarray:
    """Values ``[T, N]`` (float64) of a pandas DataFrame stored with ``to_hdf(..., format="fixed")``.

    ``key`` is the frame's name in the file (``df`` in DCRNN's ``metr-la.h5``, ``speed`` in ``pems-bay.h5``);
    ``None`` takes the only frame. Reads the HDF5 layout directly with h5py, so pandas/PyTables are not needed.
    """
    import h5py

    path = Path(path)
    with reading(path, "an HDF5 file"), h5py.File(path, "r") as handle:
        kinds = {name: _text(node.attrs.get("pandas_type", "")) for name, node in handle.items()}
        frames = sorted(name for name, kind in kinds.items() if kind.startswith("frame"))
        if key is None and len(frames) == 1:
            key = frames[0]
        if key is None or key not in handle:
            wanted = f"no DataFrame named {key!r}" if key else "not exactly one DataFrame"
            raise FormatError(f"{path} has {wanted} (found {frames}); use the published DCRNN .h5 file.")
        if kinds[key] == "frame_table":
            raise FormatError(
                f"{path} stores {key!r} in pandas 'table' format; re-save it with "
                f"DataFrame.to_hdf(path, key={key!r}, format='fixed') or convert it to .npz."
            )
        if kinds[key] != "frame":
            raise FormatError(
                f"{path} entry {key!r} is not a pandas DataFrame; use the published DCRNN .h5 file."
            )
        return _frame_values(path, handle[key])


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    if len(header) < 2:
        raise FormatError(
            f"{path} has no header of a timestamp column followed by series columns; use the published CSV."
        )
    return [name.strip() for name in header]


def _parse_float(text: str, path: Path, line: int, column: str) -> float:
    text = text.strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise FormatError(
            f"{path} line {line} column {column!r} holds {text[:30]!r}, which is not a number; fix or replace "
            "the file."
        ) from None


def _read_csv_slow(path: Path, header: list[str]) -> np.ndarray:
    """Line-by-line parse: empty fields become NaN, bad lines are reported with their 1-based line number."""
    rows: list[list[float]] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for line, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise CorruptFileError(
                    f"{path} line {line} has {len(fields)} fields but the header has {len(header)}; {REFETCH}."
                )
            rows.append([_parse_float(v, path, line, c) for v, c in zip(fields[1:], header[1:], strict=True)])
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(header) - 1)


def read_wide_csv(path: str | Path, last_column: str | None = None) -> np.ndarray:
    """Values ``[T, N]`` (float32) of a CSV whose first column is a timestamp and every other a series.

    ``last_column`` moves that column to the end (the release moves Electricity's ``OT`` last). Empty fields
    become NaN; ``nan`` strings stay NaN.
    """
    path = Path(path)
    with reading(path, "a CSV table"):
        header = _csv_header(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
                values = np.loadtxt(
                    path, delimiter=",", skiprows=1, usecols=range(1, len(header)), dtype=np.float32, ndmin=2
                )
        except ValueError:
            values = _read_csv_slow(path, header)
        if values.shape[0] == 0:
            raise CorruptFileError(f"{path} has a header but no data rows; {REFETCH}.")
    if last_column is not None:
        names = header[1:]
        if last_column not in names:
            raise FormatError(
                f"{path} has no column {last_column!r} (columns: {names[:3]}...{names[-2:]}); use the published CSV."
            )
        moved = names.index(last_column)
        order = [i for i in range(len(names)) if i != moved] + [moved]
        values = values[:, order]
    return values


def read_array(
    path: str | Path, fmt: str, key: str | None = None, last_column: str | None = None
) -> np.ndarray:
    """Dispatch to the reader of ``fmt`` (one of :data:`ARRAY_FORMATS`); ``key`` names the array/variable/frame."""
    path = Path(path)
    if fmt == "npz":
        return read_npz(path, key or "data")
    if fmt == "npy":
        return read_npy(path)
    if fmt == "mat":
        return read_mat(path, key)
    if fmt == "hdf":
        return read_pandas_hdf(path, key)
    if fmt == "csv":
        return read_wide_csv(path, last_column)
    raise ValueError(f"Unknown array format {fmt!r}; use one of {', '.join(ARRAY_FORMATS)}.")


def to_series(
    array: np.ndarray,
    source: str | Path,
    layout: str = "TNC",
    channel: int = 0,
    steps_per_day: int | None = None,
    ranks: tuple[int, ...] = (2, 3),
) -> np.ndarray:
    """Select the target channel and return a contiguous float32 ``[T, N]`` series.

    array: ``[T, N]`` or ``[T, N, C]`` for layout ``TNC``; ``[S, D, N]`` (slot of day, day, node) for ``SDN``,
    flattened to ``t = day * S + slot`` (the GTC ``pems08_288_62_170.mat``); ``S`` must equal ``steps_per_day``
    when given. ``channel`` indexes ``C`` (only 0 is valid for single-channel data). ``ranks``: the ranks a
    ``TNC`` file is published with (``(3,)`` refuses a ``[T, N]`` array where ``[T, N, C]`` is expected).
    ``source`` names the file in error messages.
    """
    if array.dtype.kind not in "fiub":
        raise FormatError(f"{source} holds {array.dtype} values, not numbers; use the published file.")
    if layout == "TNC" and array.ndim in (2, 3) and array.ndim not in ranks:
        expected = " or ".join("[T, N, C]" if r == 3 else "[T, N]" for r in ranks)
        raise FormatError(
            f"{source} holds a rank-{array.ndim} array of shape {array.shape} but this file is published as "
            f"{expected}; use the published file."
        )
    if layout == "SDN":
        if array.ndim != 3:
            raise FormatError(
                f"{source} has shape {array.shape}, expected [slot of day, day, node]; use the published file."
            )
        if steps_per_day is not None and array.shape[0] != steps_per_day:
            raise FormatError(
                f"{source} has {array.shape[0]} slots per day in its first axis, expected {steps_per_day}; use "
                "the published file."
            )
        array = array.transpose(1, 0, 2).reshape(-1, array.shape[2])
    elif layout != "TNC":
        raise ValueError(f"Unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}.")
    if array.ndim == 2:
        if channel != 0:
            raise FormatError(
                f"{source} has a single channel, so channel {channel} does not exist; set channel: 0."
            )
        series = array
    elif array.ndim == 3:
        if not 0 <= channel < array.shape[2]:
            raise FormatError(
                f"{source} has {array.shape[2]} channels, so channel {channel} does not exist; set channel to "
                f"0..{array.shape[2] - 1}."
            )
        series = array[:, :, channel]
    else:
        raise FormatError(
            f"{source} has shape {array.shape} (rank {array.ndim}), expected [T, N] or [T, N, C]; use the "
            "published file."
        )
    return np.ascontiguousarray(series, dtype=np.float32)
