"""Reading a dataset's files: which file wins, checks against the catalogue, missing files, and the real files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from stm3_lightning.data.catalogue import DATASETS
from stm3_lightning.data.download import file_checksum
from stm3_lightning.data.errors import ChecksumError, DataError, DataWarning, FormatError
from stm3_lightning.data.reading import load_series


def place_npz(root: Path, relpath: str, data: np.ndarray) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, data=data)
    return path


# --------------------------------------------------------------------------------------------- loading rules


def test_first_accepted_file_wins(tmp_path: Path) -> None:
    place_npz(tmp_path, "PEMS08/PEMS08_flow.npz", np.zeros((4, 170, 1)))
    assert DATASETS["pems08"].find_file(tmp_path).path == "PEMS08/PEMS08_flow.npz"
    place_npz(tmp_path, "PEMS08/PEMS08.npz", np.ones((4, 170, 3)))
    with pytest.warns(DataWarning, match="4 steps"):
        series = load_series("pems08", tmp_path, download=False)
    assert series.source.name == "PEMS08.npz" and series.values.max() == 1


def test_wrong_node_count(tmp_path: Path) -> None:
    place_npz(tmp_path, "PEMS04/PEMS04.npz", np.zeros((10, 170, 3)))
    with pytest.raises(FormatError, match="has 170 nodes but PEMS04 has 307; it is not the PEMS04 file"):
        load_series("pems04", tmp_path, download=False)


@pytest.mark.parametrize(
    ("name", "relpath", "nodes"),
    [
        ("pems08", "PEMS08/PEMS08.npz", 170),
        ("pems08", "PEMS08/PEMS08_flow.npz", 170),
        ("milan_sms", "Milan/milan.npz", 300),
    ],
)
def test_two_dimensional_array_where_published_file_is_three_dimensional(
    tmp_path: Path, name: str, relpath: str, nodes: int
) -> None:
    """The README's contract: a file of the wrong rank is refused (these files are released as [T, N, C])."""
    place_npz(tmp_path, relpath, np.zeros((10, nodes)))
    with pytest.raises(
        FormatError, match=r"rank-2 array of shape \(10, \d+\) but this file is published as \[T, N, C\]"
    ):
        load_series(name, tmp_path, download=False)


def test_channel_out_of_range(tmp_path: Path) -> None:
    place_npz(tmp_path, "Milan/milan.npz", np.zeros((10, 300, 3)))
    with pytest.raises(FormatError, match="3 channels, so channel 5 does not exist"):
        load_series("milan_sms", tmp_path, download=False, channel=5)


def test_known_mat_is_checksummed_on_load(tmp_path: Path) -> None:
    path = tmp_path / "PEMS08" / "pems08_288_62_170.mat"
    path.parent.mkdir()
    scipy.io.savemat(path, {"T": np.zeros((288, 1, 170), np.uint16)})
    with pytest.raises(ChecksumError, match="8c5b2eb9.* was expected; delete it"):
        load_series("pems08", tmp_path, download=False)


@pytest.mark.filterwarnings("ignore::stm3_lightning.data.errors.DataWarning")
def test_adjacency_of_wrong_size(tmp_path: Path) -> None:
    place_npz(tmp_path, "METR_LA/metr_la.npz", np.zeros((20, 207), np.float32))
    (tmp_path / "METR_LA/adj_mx.pkl").write_bytes(pickle.dumps([["a"], {"a": 0}, np.eye(3)], protocol=2))
    with pytest.raises(FormatError, match=r"\(3, 3\) matrix but METR-LA has 207 nodes"):
        load_series("metr_la", tmp_path, download=False)


def test_missing_without_mirror_names_files_and_source(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_series("milan_call", tmp_path, download=True)
    message = str(info.value)
    assert str(tmp_path / "Milan" / "milan.npz") in message and "zenodo.org/records/17946270" in message


# --------------------------------------------------------------------------------------------- real data


README_SHA256 = {
    "PEMS08/pems08_288_62_170.mat": "8c5b2eb90ddcbd3c3ae80dc066e3a949a79783b696e7d87b5af5032ce196b1c0",
    "PEMS08/PEMS08_flow.npz": "be2c56694fc6dcf01fd562abf8f50ec64586a4d6afabef52cfa10d3def1bc720",
    "PEMS08/PEMS08.csv": "859d68e7583ed4e6016588eaaca494d3ece286dae361614c5c1833017f87eaa7",
    "ETTh1/ETTh1.csv": "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
}


def test_real_files_match_readmes_and_pins(real_data_dir: Path) -> None:
    """The shared files are the published ones: README sha256s, and the git blob ids the mirrors pin."""
    for relpath, digest in README_SHA256.items():
        if (real_data_dir / relpath).is_file():
            assert file_checksum(real_data_dir / relpath) == digest, relpath
    assert (
        file_checksum(real_data_dir / "PEMS08/PEMS08.csv", "gitsha1")
        == "cf11bea3ff4229d2d900fdcf1085828d25429c88"
    )
    pins = {f.path: f.checksum for s in DATASETS.values() for f in (*s.files, *s.adjacency) if f.checksum}
    assert pins["PEMS08/pems08_288_62_170.mat"] == "sha256:" + README_SHA256["PEMS08/pems08_288_62_170.mat"]
    assert pins["PEMS08/PEMS08.csv"] == "sha256:" + README_SHA256["PEMS08/PEMS08.csv"]
    assert pins["ETT-small/ETTh1.csv"] == "sha256:" + README_SHA256["ETTh1/ETTh1.csv"]


def test_real_pems08_every_layout_agrees(real_data_dir: Path, tmp_path: Path) -> None:
    """The flow .npz and the GTC .mat give the same [17856, 170] series (AGCRN's logged statistics)."""
    results = {}
    for name in ("PEMS08_flow.npz", "pems08_288_62_170.mat"):
        (tmp_path / name / "PEMS08").mkdir(parents=True)
        os.symlink(real_data_dir / "PEMS08" / name, tmp_path / name / "PEMS08" / name)
        os.symlink(real_data_dir / "PEMS08" / "PEMS08.csv", tmp_path / name / "PEMS08" / "PEMS08.csv")
        results[name] = load_series("pems08", tmp_path / name, download=False)
    flow, mat = results.values()
    np.testing.assert_array_equal(flow.values, mat.values)
    values = flow.values.astype(np.float64)
    assert values.shape == (17856, 170)
    assert (values.max(), values.min(), np.median(values)) == (1147, 0, 215)
    assert values.mean() == pytest.approx(230.68069424678473, abs=1e-9)
    assert flow.adjacency.shape == (170, 170) and int(flow.adjacency.sum()) == 277  # 295 rows, 18 duplicates


def test_real_etth1(real_data_dir: Path) -> None:
    if not (real_data_dir / "ETTh1" / "ETTh1.csv").is_file():
        pytest.skip("ETTh1/ETTh1.csv not in the shared data folder")
    series = load_series("etth1", real_data_dir, download=False)
    assert series.values.shape == (17420, 7) and series.adjacency is None
    np.testing.assert_allclose(series.values[0], [5.827, 2.009, 1.599, 0.462, 4.203, 1.34, 30.531], rtol=1e-6)
    assert np.isfinite(series.values).all()
