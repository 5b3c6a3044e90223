"""Every dataset's spec: files, sources, checksums, sizes and default protocol (the catalogue's contents).

File names follow the STM3 release (``lib/load_dataset.py``; Zenodo record 17946270); the original layouts (ASTGCN
``.npz``, DCRNN ``.h5``/``adj_mx.pkl``, GTC ``.mat``, ETDataset CSV) are accepted too. Facts not verifiable from a
published file are marked "[inferred]". Look datasets up through :mod:`stm3_lightning.data.catalogue`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from stm3_lightning.config.schema import SyntheticConfig
from stm3_lightning.data.specs import DataFile, DatasetSpec, Protocol

ZENODO_URL = "https://zenodo.org/records/17946270"
_ASTGNN = "https://github.com/guoshnBJTU/ASTGNN/raw/29ce7a17942e5e11d5fc15e61c6cd0cb2e64ec63/data"
_GTC = "https://github.com/summerdenglei/GTC/raw/711cc5edce2b4ab365e1af10414d58d541681fd5"
_ETDATASET = "https://github.com/zhouhaoyi/ETDataset/raw/11ab373cf9c9f5be7698e219a5a170e1b1c8a930/ETT-small"
_RELEASE = f"the STM3 release data (Zenodo record 17946270, {ZENODO_URL})"


def _pems_spec(
    number: int,
    num_nodes: int,
    num_steps: int,
    npz_checksum: str,
    edges_checksum: str,
    extra: tuple[DataFile, ...] = (),
    ids: DataFile | None = None,
    source: str = f"ASTGCN/ASTGNN release ({_ASTGNN.split('/raw/')[0]})",
    citation: str = "Guo et al., ASTGCN, AAAI 2019; Song et al., STSGCN, AAAI 2020",
    note: str = "",
    summary: str = "",
) -> DatasetSpec:
    """PeMS03/04/07/08 as released by ASTGCN/STSGCN: ``PEMS0x.npz['data']`` ``[T, N, C]``, channel 0 = flow."""
    tag = f"PEMS0{number}"
    npz = DataFile(
        f"{tag}/{tag}.npz",
        "npz",
        key="data",
        ranks=(3,),
        url=f"{_ASTGNN}/{tag}/{tag}.npz",
        checksum=npz_checksum,
        note="ASTGCN/STSGCN layout [T, N, C], channel 0 = flow (the STM3 release's file)",
    )
    edges = DataFile(
        f"{tag}/{tag}.csv",
        "edges",
        ids=ids,
        url=f"{_ASTGNN}/{tag}/{tag}.csv",
        checksum=edges_checksum,
        note="edge list from,to,cost -> binary directed adjacency",
    )
    return DatasetSpec(
        name=f"pems0{number}",
        title=tag,
        num_nodes=num_nodes,
        num_steps=num_steps,
        freq="5min",
        steps_per_day=288,
        files=(npz, *extra),
        downloads=(npz,),
        adjacency=(edges,),
        source=source,
        licence="Caltrans PeMS public data; the prepared files carry no explicit licence",
        citation=citation,
        aliases=(f"pemsd{number}", f"pems{number}"),
        protocol=Protocol(
            summary or f"{tag} (PeMSD{number}) traffic flow (channel 0), {num_nodes} sensors, 5-minute steps."
        ),
        note=note,
    )


_PEMS08_MAT = DataFile(
    "PEMS08/pems08_288_62_170.mat",
    "mat",
    key="T",
    layout="SDN",
    url=f"{_GTC}/pems08_288_62_170.mat",
    checksum="sha256:8c5b2eb90ddcbd3c3ae80dc066e3a949a79783b696e7d87b5af5032ce196b1c0",
    verify_on_load=True,
    note="MATLAB v5, variable T, uint16 [288 slots, 62 days, 170 sensors], t = day*288 + slot (flow only)",
)
_PEMS08_FLOW = DataFile(
    "PEMS08/PEMS08_flow.npz",
    "npz",
    key="data",
    ranks=(3,),
    note="flow only, [T, N, 1] (built from the .mat: same numbers)",
)
_PEMS03_IDS = DataFile(
    "PEMS03/PEMS03.txt",
    "ids",
    url=f"{_ASTGNN}/PEMS03/PEMS03.txt",
    checksum="sha256:553bd79618c1e7eb195b467b5a3114d44c5adb43f7ab8b19789fd9dfaa43c439",
    note="sensor ids in node order (PEMS03.csv names sensors by id)",
)


def _pems08() -> DatasetSpec:
    """PEMS08: the release's npz, the flow-only npz and the GTC .mat; downloads the .mat first (sha256)."""
    spec = _pems_spec(
        8,
        170,
        17856,
        extra=(_PEMS08_FLOW, _PEMS08_MAT),
        npz_checksum="gitsha1:f5f3e84a00417573aa8487fe1e9e8cd13c6026c8",
        edges_checksum="sha256:859d68e7583ed4e6016588eaaca494d3ece286dae361614c5c1833017f87eaa7",
        source=f"{_RELEASE}; PEMS08.npz from ASTGCN/ASTGNN; flow-only .mat from github.com/summerdenglei/GTC",
        note="2016-07-01..2016-08-31; flow max 1147, min 0, mean 230.68 (as AGCRN's load log)",
        summary="PEMS08 (PeMSD8) traffic flow (channel 0), 170 sensors, 17856 5-minute steps (STM3 PEMSD8).",
    )
    return replace(spec, downloads=(_PEMS08_MAT, spec.files[0]))


DATASETS: dict[str, DatasetSpec] = {}


def _add(*specs: DatasetSpec) -> None:
    for spec in specs:
        DATASETS[spec.name] = spec


_add(
    _pems_spec(
        3,
        358,
        26208,
        npz_checksum="gitsha1:b4487154fc9611a3bf9856b0aad34efa610ea8ae",
        edges_checksum="sha256:b978bc1fee8172ac0bb02e6478f0376b68d172ee88c0c3121c60241e42c89fc6",
        ids=_PEMS03_IDS,
        citation="Song et al., STSGCN, AAAI 2020",
        note="not in the STM3 paper",
        summary="PEMS03 (PeMSD3) traffic flow, 358 sensors, 5-minute steps. Not in the STM3 paper; same protocol "
        "as PEMS04/08.",
    ),
    _pems_spec(
        4,
        307,
        16992,
        extra=(
            DataFile(
                "PeMS04/PEMS04.npz", "npz", key="data", ranks=(3,), note="the STM3 release's folder name"
            ),
        ),
        npz_checksum="gitsha1:a1a39eac4b86963b1ac22874fd1cc693eb642cd2",
        edges_checksum="sha256:68ffaa80447eb34428a9999dc28363c61406ec0fd714686d0582d2386ac6f5f7",
        source=f"{_RELEASE} (folder PeMS04/); PEMS04.npz from ASTGCN/ASTGNN",
        note="59 days of 5-minute flow",
        summary="PEMS04 (PeMSD4) traffic flow (channel 0 of PEMS04.npz), 307 sensors, 5-minute steps (STM3 PEMSD4).",
    ),
    _pems_spec(
        7,
        883,
        28224,
        npz_checksum="gitsha1:28c547f80eb8804d3e378168c80f77f82db2680a",
        edges_checksum="sha256:f7d127ebf976f1e2d93dc7d7275cef6d8c4c1828c7c8bfbaf3ee1254491314f1",
        citation="Song et al., STSGCN, AAAI 2020",
        note="not in the STM3 paper",
        summary="PEMS07 (PeMSD7) traffic flow, 883 sensors, 5-minute steps. Not in the STM3 paper; same protocol "
        "as PEMS04/08.",
    ),
    _pems08(),
)


def _dcrnn_spec(name: str, title: str, num_nodes: int, num_steps: int, **kw: Any) -> DatasetSpec:
    """METR-LA / PEMS-BAY as released by DCRNN: pandas ``.h5`` speeds (zeros = missing) + ``adj_mx*.pkl``."""
    return DatasetSpec(
        name=name,
        title=title,
        num_nodes=num_nodes,
        num_steps=num_steps,
        freq="5min",
        steps_per_day=288,
        licence="no explicit data licence; see github.com/liyaguang/DCRNN",
        citation="Li et al., DCRNN, ICLR 2018",
        **kw,
    )


_add(
    _dcrnn_spec(
        "metr_la",
        "METR-LA",
        207,
        34272,
        files=(
            DataFile("METR_LA/metr_la.npz", "npz", key="data", note="the STM3 release's file"),
            DataFile("METR-LA/metr-la.h5", "hdf", key="df", note="DCRNN pandas frame 'df', [T, N] speed"),
            DataFile("METR_LA/metr-la.h5", "hdf", key="df", note="DCRNN pandas frame 'df', [T, N] speed"),
        ),
        adjacency=(
            DataFile("METR_LA/adj_mx.pkl", "pickle", note="DCRNN [sensor_ids, sensor_id_to_ind, adj_mx]"),
            DataFile("METR-LA/adj_mx.pkl", "pickle", note="DCRNN [sensor_ids, sensor_id_to_ind, adj_mx]"),
        ),
        source=f"{_RELEASE}; or metr-la.h5 + adj_mx.pkl from the DCRNN release (github.com/liyaguang/DCRNN)",
        aliases=("metr-la", "metrla"),
        protocol=Protocol(
            "METR-LA traffic speed, 207 sensors, 5-minute steps; zeros are missing readings (STM3 METR_LA)."
        ),
        note="speed in mph; zeros are missing readings",
    ),
    _dcrnn_spec(
        "pems_bay",
        "PEMS-BAY",
        325,
        52116,
        files=(
            DataFile("PEMS-BAY/pems-bay.h5", "hdf", key="speed", note="DCRNN pandas frame 'speed', [T, N]"),
            DataFile("PEMS_BAY/pems-bay.h5", "hdf", key="speed", note="DCRNN pandas frame 'speed', [T, N]"),
        ),
        adjacency=(
            DataFile(
                "PEMS-BAY/adj_mx_bay.pkl", "pickle", note="DCRNN [sensor_ids, sensor_id_to_ind, adj_mx]"
            ),
            DataFile(
                "PEMS_BAY/adj_mx_bay.pkl", "pickle", note="DCRNN [sensor_ids, sensor_id_to_ind, adj_mx]"
            ),
        ),
        source="pems-bay.h5 + adj_mx_bay.pkl from the DCRNN release (github.com/liyaguang/DCRNN)",
        aliases=("pems-bay", "pemsbay"),
        protocol=Protocol(
            "PEMS-BAY traffic speed, 325 sensors, 5-minute steps; zeros are missing readings. Not in the STM3 paper."
        ),
        note="not in the STM3 paper; speed in mph; zeros are missing readings",
    ),
)

_MILAN = DataFile(
    "Milan/milan.npz",
    "npz",
    key="data",
    ranks=(3,),
    note="[T, 300, C]; channel 0 sms/1 call/2 internet (release)",
)


def _milan_spec(activity: str, channel: int) -> DatasetSpec:
    title = f"Milan_{activity}"
    summary = f"Milan telecom {activity} activity (channel {channel} of milan.npz), 300 cells, hourly (STM3 {title})."
    return DatasetSpec(
        name=f"milan_{activity}",
        title=title,
        num_nodes=300,
        num_steps=None,
        freq="1h",
        steps_per_day=24,
        files=(_MILAN,),
        channel=channel,
        protocol=Protocol(summary, null_val=math.nan),
        source=_RELEASE,
        licence="Open Database License (Telecom Italia Big Data Challenge release)",
        citation="Barlacchi et al., A multi-source dataset of urban life in the city of Milan and the Province of "
        "Trentino, Scientific Data 2015",
        note=f"{activity} activity of 300 grid cells; hourly per the release's steps_per_day=24 [inferred]",
    )


_add(
    _milan_spec("sms", 0),
    _milan_spec("call", 1),
    _milan_spec("internet", 2),
    DatasetSpec(
        name="knowair",
        title="KnowAir",
        num_nodes=184,
        num_steps=None,
        freq="3h",
        steps_per_day=8,
        files=(
            DataFile("KnowAir/KnowAir_all.npy", "npy", note="[T, 184] or [T, 184, C]; channel 0 is used"),
        ),
        protocol=Protocol(
            "KnowAir PM2.5, 184 cities, 3-hourly (8 steps per day) (STM3 KnowAir).", null_val=math.nan
        ),
        source=_RELEASE,
        licence="not stated; see github.com/shuowang-ai/PM2.5-GNN",
        citation="Wang et al., PM2.5-GNN, SIGSPATIAL 2020",
        note="PM2.5 of 184 Chinese cities, 2015..2018, 3-hourly [inferred]",
    ),
    DatasetSpec(
        name="nrel",
        title="NREL",
        num_nodes=137,
        num_steps=None,
        freq="unknown",
        steps_per_day=8,
        files=(DataFile("NREL/X_selected.npy", "npy", note="[T, 137] or [T, 137, C]; channel 0 is used"),),
        protocol=Protocol(
            "NREL solar power, 137 plants; the release sets 8 steps per day (resolution undocumented) (STM3 NREL).",
            null_val=math.nan,
        ),
        source=_RELEASE,
        licence="NREL public data (Solar Power Data for Integration Studies)",
        citation="NREL Solar Power Data for Integration Studies (Alabama PV plants, as in LSTNet) [inferred]",
        note="137 PV plants [inferred]; time resolution not documented, the release uses steps_per_day=8",
    ),
)

_ETTH1_RELEASE = DataFile(
    "ETT-small/ETTh1.csv",
    "csv",
    url=f"{_ETDATASET}/ETTh1.csv",
    checksum="sha256:f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
    note="date + 7 columns (HUFL..OT), each a node",
)

_add(
    DatasetSpec(
        name="etth1",
        title="ETTh1",
        num_nodes=7,
        num_steps=17420,
        freq="1h",
        steps_per_day=24,
        files=(_ETTH1_RELEASE, DataFile("ETTh1/ETTh1.csv", "csv", note="same file, per-dataset folder")),
        downloads=(_ETTH1_RELEASE,),
        protocol=Protocol(
            "ETTh1 (7 hourly series as nodes), Informer borders: train [0, 8640), val [8640-L, 11520), test "
            "[11520-L, 14400); per-node z-score, loss and metrics on the z-scored scale (LTSF convention) (STM3 ETTh1).",
            split_mode="borders",
            split_borders=(8640, 11520, 14400),
            per_node=True,
            real_value=False,
            null_val=math.nan,
        ),
        source=f"{_RELEASE}; or github.com/zhouhaoyi/ETDataset (ETT-small/ETTh1.csv)",
        licence="CC BY-ND 4.0",
        citation="Zhou et al., Informer, AAAI 2021",
        aliases=("ett_h1", "ett-h1"),
        note="2016-07-01..2018-06-26 hourly; Informer borders 12/4/4 months, metrics on z-scored values",
    ),
    DatasetSpec(
        name="electricity",
        title="Electricity",
        num_nodes=321,
        num_steps=26304,
        freq="1h",
        steps_per_day=24,
        files=(
            DataFile(
                "electricity/electricity.csv",
                "csv",
                last_column="OT",
                note="date + 321 clients, OT moved last",
            ),
            DataFile(
                "Electricity/electricity.csv",
                "csv",
                last_column="OT",
                note="date + 321 clients, OT moved last",
            ),
        ),
        protocol=Protocol(
            "Electricity (321 hourly clients as nodes, OT last), TSLib split: train int(0.7T), test int(0.2T), val "
            "the rest, val/test start L steps early; per-node z-score, loss and metrics on the z-scored scale "
            "(STM3 Electricity).",
            split_mode="ratio_lookback",
            split_ratios=(0.7, 0.1, 0.2),
            per_node=True,
            real_value=False,
            null_val=math.nan,
        ),
        source=f"{_RELEASE}; or electricity.csv of the Time-Series-Library datasets (github.com/thuml)",
        licence="CC BY 4.0 (UCI ElectricityLoadDiagrams20112014)",
        citation="Trindade, UCI ElectricityLoadDiagrams20112014; hourly 321-client version of LSTNet (Lai et al. 2018)",
        aliases=("ecl",),
        note="hourly kWh of 321 clients; TSLib split 70/10/20 with look-back, metrics on z-scored values",
    ),
)


_add(
    DatasetSpec(
        name="synthetic",
        title="Synthetic",
        num_nodes=SyntheticConfig.num_nodes,
        num_steps=None,
        freq="15min",
        steps_per_day=SyntheticConfig.steps_per_day,
        files=(),
        generated=True,
        protocol=Protocol(
            "Deterministic synthetic graph-diffused daily/weekly signals plus noise (offline default): 14 days of "
            "15-minute steps on 16 nodes, so `make train` (STM3, 10 epochs) takes < 2 min on 2 cores and beats "
            "persistence; change data.synthetic.* for more.",
            null_val=math.nan,
            input_len=24,
            horizon=12,
            batch_size=32,
        ),
        source="generated by stm3_lightning.data.synthetic (data.synthetic.*)",
        licence="none needed",
        citation="none",
    )
)
