"""Dataset registry: spec consistency with configs/data, lookup, listing, loading rules, and the real files."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from omegaconf import OmegaConf

from stm3_lightning.config.schema import DataConfig
from stm3_lightning.data.download import file_checksum, parse_checksum
from stm3_lightning.data.errors import ChecksumError, DataError, DataWarning, FormatError
from stm3_lightning.data.registry import (
    DATASETS,
    DatasetSpec,
    datasets_table,
    find_file,
    get_spec,
    load_series,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"
PAPER = (
    "pems04",
    "pems08",
    "metr_la",
    "milan_sms",
    "milan_call",
    "milan_internet",
    "knowair",
    "nrel",
    "etth1",
    "electricity",
)


def place_npz(root: Path, relpath: str, data: np.ndarray) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, data=data)
    return path


# --------------------------------------------------------------------------------------------- specs


def test_paper_datasets_are_registered() -> None:
    assert set(PAPER) <= set(DATASETS)
    assert {"pems03", "pems07", "pems_bay"} <= set(DATASETS)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_spec_is_consistent(name: str) -> None:
    spec = DATASETS[name]
    assert spec.name == name and spec.num_nodes > 0 and spec.steps_per_day > 0
    assert spec.files and len(set(spec.paths)) == len(spec.paths)
    assert all(not Path(p).is_absolute() and ".." not in Path(p).parts for p in spec.paths)
    assert spec.source and spec.licence and spec.citation
    for mirror in spec.downloads:
        assert mirror in spec.files and mirror.url.startswith("https://") and "/raw/" in mirror.url
        commit = mirror.url.split("/raw/")[1].split("/")[0]
        assert len(commit) == 40, "download URLs must pin a commit"
        parse_checksum(mirror.checksum)
    if name in PAPER and name != "pems04":
        assert "zenodo.org/records/17946270" in spec.source


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_config_mirrors_spec(name: str) -> None:
    """configs/data/<name>.yaml validates against DataConfig and carries the spec's protocol."""
    spec: DatasetSpec = DATASETS[name]
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(CONFIGS / f"{name}.yaml"))
    p = spec.protocol
    assert cfg.name == name
    assert (cfg.input_len, cfg.horizon) == (p.input_len, p.horizon) == (96, 96)
    assert cfg.split.mode == p.split_mode
    assert tuple(cfg.split.ratios) == pytest.approx(p.split_ratios)
    assert tuple(cfg.split.borders) == p.split_borders
    assert cfg.scaler.per_node == p.per_node and cfg.real_value == p.real_value
    assert cfg.steps_per_day == spec.steps_per_day and cfg.channel == spec.channel
    assert (math.isnan(cfg.null_val) and math.isnan(p.null_val)) or cfg.null_val == p.null_val


def test_reference_protocols() -> None:
    """Reference §5: ETTh1 Informer borders, Electricity TSLib 70/10/20, everything else ratio 60/20/20."""
    ett, elec = DATASETS["etth1"].protocol, DATASETS["electricity"].protocol
    assert (ett.split_mode, ett.split_borders) == ("borders", (8640, 11520, 14400))
    assert (elec.split_mode, elec.split_ratios) == ("ratio_lookback", (0.7, 0.1, 0.2))
    for p in (ett, elec):
        assert p.per_node and not p.real_value
    for name in set(PAPER) - {"etth1", "electricity"}:
        p = DATASETS[name].protocol
        assert (p.split_mode, p.split_ratios, p.per_node, p.real_value) == (
            "ratio",
            (0.6, 0.2, 0.2),
            False,
            True,
        )
    assert [DATASETS[f"milan_{a}"].channel for a in ("sms", "call", "internet")] == [0, 1, 2]


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("PEMSD8", "pems08"),
        ("pems08", "pems08"),
        ("METR-LA", "metr_la"),
        ("ETTh1", "etth1"),
        ("PEMS-BAY", "pems_bay"),
    ],
)
def test_get_spec_aliases(alias: str, name: str) -> None:
    assert get_spec(alias).name == name


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(DataError, match=r"Unknown dataset 'pems09'; choose one of .*pems08.*stm3 datasets"):
        load_series("pems09", ".")


def test_datasets_table(tmp_path: Path) -> None:
    place_npz(tmp_path, "PEMS08/PEMS08_flow.npz", np.zeros((4, 170, 1)))
    table = datasets_table(tmp_path)
    for name in DATASETS:
        assert f"\n{name} " in table
    assert "present (PEMS08/PEMS08_flow.npz)" in table
    assert "missing (downloadable)" in table  # PEMS04: pinned mirror
    assert "zenodo.org/records/17946270" in table and str(tmp_path.resolve()) in table
    assert "status" not in datasets_table().splitlines()[0]


# --------------------------------------------------------------------------------------------- loading rules


def test_first_accepted_file_wins(tmp_path: Path) -> None:
    place_npz(tmp_path, "PEMS08/PEMS08_flow.npz", np.zeros((4, 170, 1)))
    assert find_file(DATASETS["pems08"], tmp_path).path == "PEMS08/PEMS08_flow.npz"
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
