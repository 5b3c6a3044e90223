"""File-format readers on small fixtures written in each dataset's exact published layout.

Each format gets a good file plus truncated/corrupt, wrong-key, wrong-rank and wrong-content variants; the last
section loads every dataset through ``load_series`` from fixtures in the layout its release uses.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from stm3_lightning.data import formats, graph_formats
from stm3_lightning.data.catalogue import DATASETS
from stm3_lightning.data.errors import CorruptFileError, DataWarning, FormatError, MissingDataError
from stm3_lightning.data.reading import load_series

RNG = np.random.default_rng(0)


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# --------------------------------------------------------------------------------------------- npz / npy


def test_npz_reads_key(tmp_path: Path) -> None:
    arr = RNG.random((6, 4, 3))
    np.savez(tmp_path / "a.npz", data=arr, other=np.zeros(2))
    np.savez_compressed(tmp_path / "c.npz", data=arr)
    np.testing.assert_array_equal(formats.read_npz(tmp_path / "a.npz"), arr)
    np.testing.assert_array_equal(formats.read_npz(tmp_path / "c.npz", "data"), arr)


def test_npz_wrong_key_names_the_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 2)))
    with pytest.raises(FormatError, match=r"no array named 'data' \(it holds \['x'\]\)"):
        formats.read_npz(tmp_path / "a.npz", "data")


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.05])
def test_npz_truncated(tmp_path: Path, keep: float) -> None:
    np.savez(tmp_path / "a.npz", data=RNG.random((50, 20)))
    with pytest.raises(CorruptFileError, match="truncated or corrupt"):
        formats.read_npz(truncate(tmp_path / "a.npz", keep))


def test_npz_html_page_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.npz").write_text("<!DOCTYPE html><html>Not Found</html>")
    with pytest.raises(CorruptFileError, match="HTML page"):
        formats.read_npz(tmp_path / "a.npz")


def test_npy_and_npz_swapped(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((3, 2)))
    os.replace(tmp_path / "a.npy", tmp_path / "a.npz")
    with pytest.raises(FormatError, match="single .npy array"):
        formats.read_npz(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", data=np.zeros(2))
    os.replace(tmp_path / "b.npz", tmp_path / "b.npy")
    with pytest.raises(FormatError, match=".npz archive, not a single"):
        formats.read_npy(tmp_path / "b.npy")


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", data=np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "a.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for path, reader in ((tmp_path / "a.npz", formats.read_npz), (tmp_path / "a.npy", formats.read_npy)):
        with pytest.raises(FormatError, match="pickled Python objects"):
            reader(path)


def test_npy_reads_and_detects_truncation(tmp_path: Path) -> None:
    arr = RNG.random((30, 7)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    np.testing.assert_array_equal(formats.read_npy(tmp_path / "a.npy"), arr)
    with pytest.raises(CorruptFileError, match="Cannot read .*a.npy"):
        formats.read_npy(truncate(tmp_path / "a.npy", 0.7))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="does not exist"):
        formats.read_npz(tmp_path / "nope.npz")


# --------------------------------------------------------------------------------------------- mat


def write_mat73(path: Path, **variables: np.ndarray) -> None:
    """A MATLAB v7.3 file: HDF5 with a 512-byte user block holding the MAT header, arrays stored transposed."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        for name, value in variables.items():
            handle[name] = value.transpose()
    header = (
        b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    )
    header = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with path.open("r+b") as handle:
        handle.write(header)


def test_mat_v5_variable_and_single_variable(tmp_path: Path) -> None:
    arr = RNG.integers(0, 1000, size=(4, 3, 5)).astype(np.uint16)
    scipy.io.savemat(tmp_path / "a.mat", {"T": arr})
    np.testing.assert_array_equal(formats.read_mat(tmp_path / "a.mat", "T"), arr)
    np.testing.assert_array_equal(formats.read_mat(tmp_path / "a.mat"), arr)


def test_mat_wrong_variable(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "a.mat", {"X": np.zeros((2, 2)), "Y": np.ones(3)})
    with pytest.raises(FormatError, match=r"variable named 'T' \(it holds \['X', 'Y'\]\)"):
        formats.read_mat(tmp_path / "a.mat", "T")
    with pytest.raises(FormatError, match="exactly one variable"):
        formats.read_mat(tmp_path / "a.mat")


def test_mat_truncated(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "a.mat", {"T": RNG.random((40, 30))})
    with pytest.raises(CorruptFileError, match="MATLAB"):
        formats.read_mat(truncate(tmp_path / "a.mat", 0.5))


def test_mat_v73_is_read_in_matlab_axis_order(tmp_path: Path) -> None:
    arr = RNG.random((4, 3, 5))
    write_mat73(tmp_path / "a.mat", T=arr)
    with pytest.raises(NotImplementedError):  # the fixture really is what scipy calls v7.3
        scipy.io.loadmat(tmp_path / "a.mat")
    np.testing.assert_array_equal(formats.read_mat(tmp_path / "a.mat", "T"), arr)


# --------------------------------------------------------------------------------------------- pandas hdf


def write_pandas_frame(
    path: Path,
    key: str,
    values: np.ndarray,
    blocks: list[list[int]] | None = None,
    transposed: bool = True,
    pandas_type: str = "frame",
) -> None:
    """What ``DataFrame.to_hdf(path, key, format='fixed')`` writes (DCRNN ``metr-la.h5``), built with h5py.

    values: ``[T, N]``; columns are labelled ``"c<j>"`` and split into ``blocks`` (lists of column indices).
    """
    n_rows, n_cols = values.shape
    blocks = blocks or [list(range(n_cols))]
    labels = np.array([f"c{j}".encode() for j in range(n_cols)])
    with h5py.File(path, "a") as handle:
        group = handle.create_group(key)
        group.attrs.update(
            {"pandas_type": np.bytes_(pandas_type), "pandas_version": np.bytes_("0.15.2"), "ndim": 2}
        )
        group.attrs["nblocks"] = len(blocks)
        group["axis0"] = labels
        group["axis1"] = (np.arange(n_rows, dtype=np.int64) * 300 + 1_330_560_000) * 10**9
        for b, cols in enumerate(blocks):
            group[f"block{b}_items"] = labels[cols]
            block = values[:, cols] if transposed else values[:, cols].T
            group[f"block{b}_values"] = block
            group[f"block{b}_values"].attrs["transposed"] = int(transposed)


def test_pandas_hdf_single_block(tmp_path: Path) -> None:
    values = RNG.random((12, 5))
    write_pandas_frame(tmp_path / "m.h5", "df", values)
    np.testing.assert_array_equal(formats.read_pandas_hdf(tmp_path / "m.h5", "df"), values)
    np.testing.assert_array_equal(formats.read_pandas_hdf(tmp_path / "m.h5"), values)


def test_pandas_hdf_blocks_are_put_back_in_column_order(tmp_path: Path) -> None:
    values = RNG.random((9, 6))
    write_pandas_frame(tmp_path / "m.h5", "speed", values, blocks=[[4, 0, 2], [5, 1, 3]], transposed=False)
    np.testing.assert_array_equal(formats.read_pandas_hdf(tmp_path / "m.h5", "speed"), values)


def test_pandas_hdf_wrong_key_and_table_format(tmp_path: Path) -> None:
    write_pandas_frame(tmp_path / "m.h5", "df", RNG.random((4, 3)))
    write_pandas_frame(tmp_path / "m.h5", "tbl", RNG.random((4, 3)), pandas_type="frame_table")
    with pytest.raises(FormatError, match=r"no DataFrame named 'speed' \(found \['df', 'tbl'\]\)"):
        formats.read_pandas_hdf(tmp_path / "m.h5", "speed")
    with pytest.raises(FormatError, match="not exactly one DataFrame"):
        formats.read_pandas_hdf(tmp_path / "m.h5")
    with pytest.raises(FormatError, match="format='fixed'"):
        formats.read_pandas_hdf(tmp_path / "m.h5", "tbl")


def test_pandas_hdf_truncated(tmp_path: Path) -> None:
    write_pandas_frame(tmp_path / "m.h5", "df", RNG.random((400, 50)))
    with pytest.raises(CorruptFileError, match="HDF5"):
        formats.read_pandas_hdf(truncate(tmp_path / "m.h5", 0.5), "df")


# --------------------------------------------------------------------------------------------- csv


def write_csv(path: Path, header: list[str], rows: list[list[str]], newline: str = "\n") -> Path:
    path.write_text(newline.join(",".join(r) for r in [header, *rows]) + newline)
    return path


ETT_HEADER = ["date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


def ett_rows(values: np.ndarray) -> list[list[str]]:
    return [
        [f"2016-07-01 {t % 24:02d}:00:00", *(repr(float(v)) for v in row)] for t, row in enumerate(values)
    ]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_csv_ett_layout(tmp_path: Path, newline: str) -> None:
    values = RNG.random((10, 7)).astype(np.float32)
    path = write_csv(tmp_path / "ETTh1.csv", ETT_HEADER, ett_rows(values), newline)
    np.testing.assert_array_equal(formats.read_wide_csv(path), values)


def test_csv_moves_last_column(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = write_csv(tmp_path / "e.csv", ["date", "0", "OT", "1", "2"], ett_rows(values))
    np.testing.assert_array_equal(formats.read_wide_csv(path, "OT"), values[:, [0, 2, 3, 1]])
    with pytest.raises(FormatError, match="no column 'target'"):
        formats.read_wide_csv(path, "target")


def test_csv_nans_and_empty_fields_stay_nan(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "a.csv", ["date", "a", "b"], [["t0", "1", "nan"], ["t1", "", "2"], ["t2", "NaN", "3"]]
    )
    expected = np.array([[1, np.nan], [np.nan, 2], [np.nan, 3]], dtype=np.float32)
    np.testing.assert_array_equal(formats.read_wide_csv(path), expected)


def test_csv_truncated_row_names_the_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ETT_HEADER, ett_rows(RNG.random((5, 7))))
    path.write_text(path.read_text()[:-40])
    with pytest.raises(CorruptFileError, match="line 6 has .* fields but the header has 8"):
        formats.read_wide_csv(path)


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("date,a,b\nt0,1,x\n", FormatError, "line 2 column 'b' holds 'x'"),
        ("date,a,b\n", CorruptFileError, "no data rows"),
        ("", FormatError, "no header"),
        ("date\nt0\n", FormatError, "no header"),
    ],
)
def test_csv_bad_content(tmp_path: Path, text: str, error: type[Exception], message: str) -> None:
    (tmp_path / "a.csv").write_text(text)
    with pytest.raises(error, match=message):
        formats.read_wide_csv(tmp_path / "a.csv")


# --------------------------------------------------------------------------------------------- edge lists


def test_edge_list_zero_based(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "g.csv", ["from", "to", "cost"], [["0", "2", "1.5"], ["2", "1", "3"], ["0", "2", "1"]]
    )
    expected = np.zeros((3, 3), np.float32)
    expected[0, 2] = expected[2, 1] = 1
    np.testing.assert_array_equal(graph_formats.read_edge_list(path, 3), expected)


def test_edge_list_with_sensor_ids(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"317842\r\n318711\r\n318721")  # CRLF, no final newline, as PEMS03.txt
    path = write_csv(
        tmp_path / "g.csv",
        ["from", "to", "distance"],
        [["317842", "318711", "0.8"], ["318721", "318721", "0"]],
    )
    adjacency = graph_formats.read_edge_list(path, 3, ids)
    assert adjacency[0, 1] == 1 and adjacency[2, 2] == 1 and adjacency.sum() == 2
    bad = write_csv(tmp_path / "bad.csv", ["from", "to", "cost"], [["317842", "999", "1"]])
    with pytest.raises(FormatError, match="sensor '999'"):
        graph_formats.read_edge_list(bad, 3, ids)
    with pytest.raises(FormatError, match="3 distinct sensor ids in 3 lines but the dataset has 4 nodes"):
        graph_formats.read_edge_list(path, 4, ids)


@pytest.mark.parametrize(
    ("rows", "error", "message"),
    [
        ([["0", "5", "1"]], FormatError, "node 5, outside 0..2"),
        ([["0", "a", "1"]], FormatError, "not an integer"),
        ([["7"]], CorruptFileError, "not 'from,to"),
        ([], CorruptFileError, "no edges"),
    ],
)
def test_edge_list_errors(
    tmp_path: Path, rows: list[list[str]], error: type[Exception], message: str
) -> None:
    path = write_csv(tmp_path / "g.csv", ["from", "to", "cost"], rows)
    with pytest.raises(error, match=message):
        graph_formats.read_edge_list(path, 3)


# --------------------------------------------------------------------------------------------- pickles


def dcrnn_pickle(path: Path, adjacency: np.ndarray, protocol: int, legacy_numpy: bool = False) -> Path:
    """``[sensor_ids, sensor_id_to_ind, adj_mx]`` as DCRNN's gen_adj_mx.py pickles it."""
    ids = [str(400000 + i) for i in range(adjacency.shape[0])]
    payload = pickle.dumps([ids, {s: i for i, s in enumerate(ids)}, adjacency], protocol=protocol)
    if legacy_numpy:  # what numpy < 2 (and Python 2) wrote: module numpy.core instead of numpy._core
        payload = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize(("protocol", "legacy"), [(2, False), (2, True), (4, False), (5, False)])
def test_adjacency_pickle(tmp_path: Path, protocol: int, legacy: bool) -> None:
    adjacency = RNG.random((4, 4)).astype(np.float32)
    path = dcrnn_pickle(tmp_path / "adj_mx.pkl", adjacency, protocol, legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy.core deprecation noise either
        np.testing.assert_array_equal(graph_formats.read_adjacency_pickle(path), adjacency)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch EXPLOITED",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "adj_mx.pkl"
    path.write_bytes(pickle.dumps([["a"], _Exploit(), np.eye(2)], protocol=2))
    with pytest.raises(FormatError, match=r"refers to posix.system|refers to os.system"):
        graph_formats.read_adjacency_pickle(path)
    assert not (tmp_path / "EXPLOITED").exists()


def test_pickle_without_square_matrix_and_truncated(tmp_path: Path) -> None:
    path = tmp_path / "a.pkl"
    path.write_bytes(pickle.dumps([["a"], {"a": 0}, np.zeros((2, 3))]))
    with pytest.raises(FormatError, match="no square matrix"):
        graph_formats.read_adjacency_pickle(path)
    dcrnn_pickle(path, np.eye(30, dtype=np.float32), 4)
    with pytest.raises(CorruptFileError, match="pickle"):
        graph_formats.read_adjacency_pickle(truncate(path, 0.5))


# --------------------------------------------------------------------------------------------- to_series


def test_to_series_layouts_and_channels() -> None:
    tnc = RNG.random((5, 4, 3))
    np.testing.assert_array_equal(formats.to_series(tnc, "f", channel=2), tnc[:, :, 2].astype(np.float32))
    out = formats.to_series(tnc[:, :, 0], "f")
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (5, 4)
    sdn = np.arange(4 * 3 * 2).reshape(4, 3, 2)  # [slot, day, node]
    flat = formats.to_series(sdn, "f", layout="SDN", steps_per_day=4)
    day, slot, node = 2, 1, 1
    assert flat[day * 4 + slot, node] == sdn[slot, day, node]
    nan = np.full((3, 2), np.nan)
    assert np.isnan(formats.to_series(nan, "f")).all()


@pytest.mark.parametrize(
    ("array", "kwargs", "message"),
    [
        (np.zeros((5, 4, 3)), {"channel": 3}, "3 channels, so channel 3 does not exist"),
        (np.zeros((5, 4)), {"channel": 1}, "single channel"),
        (np.zeros(5), {}, "rank 1"),
        (np.zeros((2, 2, 2, 2)), {}, "rank 4"),
        (
            np.zeros((5, 4)),
            {"ranks": (3,)},
            r"rank-2 array of shape \(5, 4\) but this file is published as \[T, N, C\]",
        ),
        (np.array([["a"]]), {}, "not numbers"),
        (np.zeros((5, 4)), {"layout": "SDN"}, "slot of day, day, node"),
        (np.zeros((5, 4, 3)), {"layout": "SDN", "steps_per_day": 288}, "5 slots per day"),
    ],
)
def test_to_series_errors(array: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        formats.to_series(array, "file.npz", **kwargs)


# --------------------------------------------------------------------------------------------- published layouts


def _write_npz_tnc(path: Path, values: np.ndarray) -> None:
    np.savez(path, data=np.stack([values, values + 1, values + 2], axis=-1))  # ASTGCN: flow, occupancy, speed


def _write_npy(path: Path, values: np.ndarray) -> None:
    np.save(path, values)


def _write_h5(path: Path, values: np.ndarray, key: str) -> None:
    write_pandas_frame(path, key, values.astype(np.float64))


def _write_csv(path: Path, values: np.ndarray, last: str | None) -> None:
    names = [str(i) for i in range(values.shape[1] - 1)]
    header = ["date", *names[:1], "OT", *names[1:]] if last else ["date", *ETT_HEADER[1:]]
    stored = values[:, [0, values.shape[1] - 1, *range(1, values.shape[1] - 1)]] if last else values
    write_csv(path, header, ett_rows(stored))


WRITERS = {
    "PEMS04/PEMS04.npz": _write_npz_tnc,
    "PeMS04/PEMS04.npz": _write_npz_tnc,
    "METR_LA/metr_la.npz": lambda p, v: np.savez(p, data=v),
    "METR-LA/metr-la.h5": lambda p, v: _write_h5(p, v, "df"),
    "PEMS-BAY/pems-bay.h5": lambda p, v: _write_h5(p, v, "speed"),
    "KnowAir/KnowAir_all.npy": _write_npy,
    "NREL/X_selected.npy": lambda p, v: _write_npy(p, v[:, :, None]),
    "ETT-small/ETTh1.csv": lambda p, v: _write_csv(p, v, None),
    "electricity/electricity.csv": lambda p, v: _write_csv(p, v, "OT"),
}


@pytest.mark.filterwarnings("ignore::stm3_lightning.data.errors.DataWarning")
@pytest.mark.parametrize(
    ("name", "relpath"),
    [
        ("pems04", "PEMS04/PEMS04.npz"),
        ("pems04", "PeMS04/PEMS04.npz"),
        ("metr_la", "METR_LA/metr_la.npz"),
        ("metr_la", "METR-LA/metr-la.h5"),
        ("pems_bay", "PEMS-BAY/pems-bay.h5"),
        ("knowair", "KnowAir/KnowAir_all.npy"),
        ("nrel", "NREL/X_selected.npy"),
        ("etth1", "ETT-small/ETTh1.csv"),
        ("electricity", "electricity/electricity.csv"),
    ],
)
def test_load_series_from_published_layout(tmp_path: Path, name: str, relpath: str) -> None:
    spec = DATASETS[name]
    values = RNG.integers(0, 500, size=(30, spec.num_nodes)).astype(np.float32)
    values[3, 1] = np.nan
    (tmp_path / relpath).parent.mkdir(parents=True)
    WRITERS[relpath](tmp_path / relpath, values)
    series = load_series(name, tmp_path, download=False)
    assert series.source == tmp_path / relpath
    assert series.values.dtype == np.float32 and series.values.shape == (30, spec.num_nodes)
    np.testing.assert_array_equal(series.values, values)  # NaN kept where it was


@pytest.mark.parametrize(("name", "channel"), [("milan_sms", 0), ("milan_call", 1), ("milan_internet", 2)])
def test_milan_channels(tmp_path: Path, name: str, channel: int) -> None:
    data = RNG.random((20, 300, 3))
    (tmp_path / "Milan").mkdir()
    np.savez(tmp_path / "Milan/milan.npz", data=data)
    series = load_series(name, tmp_path, download=False)
    assert series.channel == channel
    np.testing.assert_array_equal(series.values, data[:, :, channel].astype(np.float32))
    other = load_series(name, tmp_path, download=False, channel=(channel + 1) % 3)
    np.testing.assert_array_equal(other.values, data[:, :, (channel + 1) % 3].astype(np.float32))


@pytest.mark.filterwarnings("ignore::stm3_lightning.data.errors.DataWarning")
def test_dcrnn_adjacency_pickle_loaded_with_series(tmp_path: Path) -> None:
    spec = DATASETS["metr_la"]
    (tmp_path / "METR-LA").mkdir()
    write_pandas_frame(tmp_path / "METR-LA/metr-la.h5", "df", RNG.random((16, spec.num_nodes)))
    adjacency = RNG.random((spec.num_nodes, spec.num_nodes)).astype(np.float32)
    dcrnn_pickle(tmp_path / "METR-LA/adj_mx.pkl", adjacency, protocol=2)
    series = load_series("metr_la", tmp_path, download=False)
    assert series.adjacency_source == tmp_path / "METR-LA/adj_mx.pkl"
    np.testing.assert_array_equal(series.adjacency, adjacency)


def test_pems03_edges_need_their_id_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = replace(DATASETS["pems03"], num_nodes=3, num_steps=None)
    monkeypatch.setitem(DATASETS, "pems03", spec)
    (tmp_path / "PEMS03").mkdir()
    np.savez(tmp_path / "PEMS03/PEMS03.npz", data=np.ones((8, 3, 1)))
    write_csv(tmp_path / "PEMS03/PEMS03.csv", ["from", "to", "distance"], [["317842", "318711", "0.8"]])
    with pytest.raises(MissingDataError, match="PEMS03.txt"):
        load_series("pems03", tmp_path, download=False)
    (tmp_path / "PEMS03/PEMS03.txt").write_text("317842\n318711\n318721\n")
    series = load_series("pems03", tmp_path, download=False)
    assert series.adjacency is not None and series.adjacency[0, 1] == 1 and series.adjacency.sum() == 1


def test_short_series_warns(tmp_path: Path) -> None:
    (tmp_path / "PEMS04").mkdir()
    _write_npz_tnc(tmp_path / "PEMS04/PEMS04.npz", np.zeros((10, 307)))
    with pytest.warns(DataWarning, match="10 steps where the published PEMS04 has 16992"):
        load_series("pems04", tmp_path, download=False)
