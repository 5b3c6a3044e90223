"""Dataset catalogue: spec consistency, the configs/data files written from it, lookup, sizes, listing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from stm3_lightning.config.schema import DataConfig
from stm3_lightning.data.catalogue import DATASETS, data_info, datasets_table, get_spec, spec_problems
from stm3_lightning.data.configs import render, stale_files, write_all
from stm3_lightning.data.download import parse_checksum
from stm3_lightning.data.errors import DataError
from stm3_lightning.data.specs import DatasetSpec

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
    assert not spec_problems(spec)
    assert (spec.files or spec.generated) and len(set(spec.paths)) == len(spec.paths)
    assert all(not Path(p).is_absolute() and ".." not in Path(p).parts for p in spec.paths)
    assert spec.source and spec.licence and spec.citation
    for mirror in spec.downloads:
        assert mirror in spec.files and mirror.url.startswith("https://") and "/raw/" in mirror.url
        commit = mirror.url.split("/raw/")[1].split("/")[0]
        assert len(commit) == 40, "download URLs must pin a commit"
        parse_checksum(mirror.checksum)
    if name in PAPER and name != "pems04":
        assert "zenodo.org/records/17946270" in spec.source


def test_data_configs_are_written_from_the_catalogue() -> None:
    """configs/data/*.yaml are exactly what the catalogue renders (one file per dataset, no other)."""
    assert stale_files(CONFIGS) == []
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(DATASETS)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_data_config_validates_and_carries_the_protocol(name: str) -> None:
    spec: DatasetSpec = DATASETS[name]
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.create(render(spec)))
    p = spec.protocol
    assert cfg.name == name and (cfg.input_len, cfg.horizon) == (p.input_len, p.horizon)
    assert (cfg.split.mode, tuple(cfg.split.ratios), tuple(cfg.split.borders)) == (
        p.split_mode,
        pytest.approx(p.split_ratios),
        p.split_borders,
    )
    assert cfg.scaler.per_node == p.per_node and cfg.real_value == p.real_value
    assert cfg.steps_per_day == spec.steps_per_day and cfg.channel == spec.channel
    assert (math.isnan(cfg.null_val) and math.isnan(p.null_val)) or cfg.null_val == p.null_val
    if not spec.generated:
        assert (p.input_len, p.horizon) == (96, 96)


def test_stale_config_is_named(tmp_path: Path) -> None:
    write_all(tmp_path)
    (tmp_path / "pems08.yaml").write_text("name: pems08\n")
    (tmp_path / "pems09.yaml").write_text("name: pems09\n")
    assert stale_files(tmp_path) == [tmp_path / "pems08.yaml", tmp_path / "pems09.yaml"]


def test_model_sizes_come_from_the_catalogue_without_data(tmp_path: Path) -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.create(render(DATASETS["pems08"])))
    assert data_info(cfg).num_nodes == 170
    synth = OmegaConf.merge(
        OmegaConf.structured(DataConfig), {"name": "synthetic", "synthetic": {"num_nodes": 5}}
    )
    assert data_info(synth).num_nodes == 5


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
        get_spec("pems09")


def test_datasets_table(tmp_path: Path) -> None:
    place_npz(tmp_path, "PEMS08/PEMS08_flow.npz", np.zeros((4, 170, 1)))
    table = datasets_table(tmp_path)
    for name in DATASETS:
        assert f"\n{name} " in table
    assert "present (PEMS08/PEMS08_flow.npz)" in table
    assert "missing (downloadable)" in table  # PEMS04: pinned mirror
    assert "zenodo.org/records/17946270" in table and str(tmp_path.resolve()) in table
    assert "status" not in datasets_table().splitlines()[0]
