"""The benchmark datasets: where their files live, how to read them, and their default protocol.

``DATASETS`` maps a dataset name (the name of ``configs/data/<name>.yaml``) to a :class:`DatasetSpec`.
:func:`load_series` finds the first accepted file under ``data_dir`` (downloading a pinned, checksummed mirror
when none is present and that is allowed), reads it with :mod:`stm3_lightning.data.formats` and returns the
target channel as ``[T, N]`` float32 plus the adjacency matrix when the dataset ships one.

File names and folders follow the official STM3 release (``lib/load_dataset.py``, data published as Zenodo
record 17946270); the original layouts (ASTGCN ``.npz``, DCRNN ``.h5``/``adj_mx.pkl``, the GTC ``.mat``, the
ETDataset CSV) are accepted as alternatives. Facts not verifiable from a published file are marked
"[inferred]" in the specs' notes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from stm3_lightning.data import formats
from stm3_lightning.data.download import DEFAULT_TIMEOUT_S, download_file, parse_checksum, verify_checksum
from stm3_lightning.data.errors import (
    ChecksumError,
    DataError,
    DataWarning,
    DownloadError,
    FormatError,
    MissingDataError,
)

ZENODO_URL = "https://zenodo.org/records/17946270"
_ASTGNN = "https://github.com/guoshnBJTU/ASTGNN/raw/29ce7a17942e5e11d5fc15e61c6cd0cb2e64ec63/data"
_GTC = "https://github.com/summerdenglei/GTC/raw/711cc5edce2b4ab365e1af10414d58d541681fd5"
_ETDATASET = "https://github.com/zhouhaoyi/ETDataset/raw/11ab373cf9c9f5be7698e219a5a170e1b1c8a930/ETT-small"
_RELEASE = f"the STM3 release data (Zenodo record 17946270, {ZENODO_URL})"


@dataclass(frozen=True)
class DataFile:
    """One file a dataset accepts, relative to ``data_dir``, and how to read it.

    fmt: a :data:`formats.ARRAY_FORMATS` entry for series files, :data:`formats.ADJACENCY_FORMATS` for graphs.
    key: array name (npz), variable (mat, ``None`` = the only one) or DataFrame name (hdf, ``None`` = the only one).
    layout: ``TNC`` (``[T, N]`` or ``[T, N, C]``) or ``SDN`` (``[slot of day, day, node]``).
    ranks: the array ranks the published file has (``(3,)`` for files released as ``[T, N, C]``, which a
    ``[T, N]`` array cannot be); other ranks are refused.
    last_column: CSV column moved to the end (Electricity ``OT``).
    ids: for edge lists with sensor ids, the file listing the ids in node order.
    url, checksum: a pinned download (``sha256:<hex>`` or ``gitsha1:<hex>``); both or neither.
    verify_on_load: check ``checksum`` every time the file is read (only for small canonical files).
    """

    path: str
    fmt: str
    key: str | None = None
    layout: str = "TNC"
    ranks: tuple[int, ...] = (2, 3)
    last_column: str | None = None
    ids: DataFile | None = None
    url: str | None = None
    checksum: str | None = None
    verify_on_load: bool = False
    note: str = ""

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def downloadable(self) -> bool:
        return self.url is not None and self.checksum is not None


@dataclass(frozen=True)
class Protocol:
    """A dataset's default benchmark protocol; mirrors ``configs/data/<name>.yaml`` (reference §5)."""

    split_mode: str = "ratio"
    split_ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_borders: tuple[int, ...] = ()
    per_node: bool = False
    real_value: bool = True
    null_val: float = 0.0
    input_len: int = 96
    horizon: int = 96


@dataclass(frozen=True)
class DatasetSpec:
    """Everything known about one dataset.

    files: accepted series files, read in this order when several are present (the release's name first).
    downloads: series files fetched, in this order, when none is present and downloading is allowed.
    adjacency: accepted graph files (optional; fetched alongside a downloaded series when they have a URL).
    channel: the default target channel of multi-channel files.
    """

    name: str
    title: str
    num_nodes: int
    num_steps: int | None
    freq: str
    steps_per_day: int
    files: tuple[DataFile, ...]
    source: str
    licence: str
    citation: str
    protocol: Protocol = field(default_factory=Protocol)
    downloads: tuple[DataFile, ...] = ()
    adjacency: tuple[DataFile, ...] = ()
    channel: int = 0
    aliases: tuple[str, ...] = ()
    note: str = ""

    @property
    def paths(self) -> tuple[str, ...]:
        """Relative paths of the accepted series files."""
        return tuple(f.path for f in self.files)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(f.url for f in self.downloads if f.url)


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


# --------------------------------------------------------------------------------------------------- specs


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
    )
    return replace(spec, downloads=(_PEMS08_MAT, spec.files[0]))


DATASETS: dict[str, DatasetSpec] = {}


def _register(*specs: DatasetSpec) -> None:
    for spec in specs:
        DATASETS[spec.name] = spec


_register(
    _pems_spec(
        3,
        358,
        26208,
        npz_checksum="gitsha1:b4487154fc9611a3bf9856b0aad34efa610ea8ae",
        edges_checksum="sha256:b978bc1fee8172ac0bb02e6478f0376b68d172ee88c0c3121c60241e42c89fc6",
        ids=_PEMS03_IDS,
        citation="Song et al., STSGCN, AAAI 2020",
        note="not in the STM3 paper",
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
    ),
    _pems_spec(
        7,
        883,
        28224,
        npz_checksum="gitsha1:28c547f80eb8804d3e378168c80f77f82db2680a",
        edges_checksum="sha256:f7d127ebf976f1e2d93dc7d7275cef6d8c4c1828c7c8bfbaf3ee1254491314f1",
        citation="Song et al., STSGCN, AAAI 2020",
        note="not in the STM3 paper",
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


_register(
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
        note="not in the STM3 paper; speed in mph; zeros are missing readings",
    ),
)

_MILAN = DataFile(
    "Milan/milan.npz",
    "npz",
    key="data",
    ranks=(3,),
    note="[T, 300, C]; channel 0 sms, 1 call, 2 internet (release)",
)


def _milan_spec(activity: str, channel: int) -> DatasetSpec:
    return DatasetSpec(
        name=f"milan_{activity}",
        title=f"Milan_{activity}",
        num_nodes=300,
        num_steps=None,
        freq="1h",
        steps_per_day=24,
        files=(_MILAN,),
        channel=channel,
        protocol=Protocol(null_val=math.nan),
        source=_RELEASE,
        licence="Open Database License (Telecom Italia Big Data Challenge release)",
        citation="Barlacchi et al., A multi-source dataset of urban life in the city of Milan and the Province of "
        "Trentino, Scientific Data 2015",
        note=f"{activity} activity of 300 grid cells; hourly per the release's steps_per_day=24 [inferred]",
    )


_register(
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
        protocol=Protocol(null_val=math.nan),
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
        protocol=Protocol(null_val=math.nan),
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

_register(
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


def find_file(spec: DatasetSpec, data_dir: str | Path) -> DataFile | None:
    """The first accepted series file present under ``data_dir``, or ``None``."""
    root = Path(data_dir).expanduser()
    return next((f for f in spec.files if (root / f.path).is_file()), None)


def _where(spec: DatasetSpec, root: Path) -> str:
    """'one of A, B in <root>' phrase naming every accepted file and its folder."""
    names = [str(root / f.path) for f in spec.files]
    return names[0] if len(names) == 1 else "one of " + ", ".join(names)


def _missing(spec: DatasetSpec, root: Path, download: bool) -> MissingDataError:
    hint = ""
    if spec.downloads and not download:
        hint = f", or allow downloading (data.download=true) to fetch it from {spec.downloads[0].url}"
    return MissingDataError(
        f"No {spec.title} data found: place {_where(spec, root)} (from {spec.source}){hint}."
    )


# --------------------------------------------------------------------------------------------------- download


def _fetch(file: DataFile, root: Path, timeout: float) -> Path:
    """Download ``file`` (which must have a pinned url and checksum) to ``root / file.path``."""
    if file.url is None or file.checksum is None:
        raise ValueError(f"{file.path} has no pinned download.")
    return download_file(file.url, root / file.path, file.checksum, timeout)


def _fetch_extras(spec: DatasetSpec, root: Path, timeout: float) -> None:
    """Best-effort download of the adjacency files (and their id lists); failures only warn."""
    for graph in spec.adjacency:
        for item in (graph.ids, graph):
            if item is None or not item.downloadable or (root / item.path).is_file():
                continue
            try:
                _fetch(item, root, timeout)
            except DataError as exc:
                warnings.warn(DataWarning(f"{spec.title} adjacency not downloaded: {exc}"), stacklevel=3)


def download_dataset(name: str, data_dir: str | Path, timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """Make sure a series file of ``name`` is present under ``data_dir``; returns its path.

    Tries the spec's pinned, checksummed mirrors in order (and then its adjacency files, best effort). Raises
    :class:`MissingDataError` naming every failed mirror and the files to place by hand when all fail.
    """
    spec = get_spec(name)
    root = Path(data_dir).expanduser()
    present = find_file(spec, root)
    if present is not None:
        return root / present.path
    if not spec.downloads:
        raise _missing(spec, root, download=True)
    failures = []
    for mirror in spec.downloads:
        try:
            path = _fetch(mirror, root, timeout)
        except (DownloadError, ChecksumError) as exc:
            reason = exc.reason if isinstance(exc, DownloadError) else "checksum mismatch"
            failures.append(f"{mirror.url}: {reason}")
            continue
        _fetch_extras(spec, root, timeout)
        return path
    raise MissingDataError(
        f"Could not download {spec.title} ({'; '.join(failures)}); without network, place {_where(spec, root)} "
        f"by hand (from {spec.source})."
    )


# --------------------------------------------------------------------------------------------------- loading


def _read_values(spec: DatasetSpec, file: DataFile, path: Path, channel: int) -> np.ndarray:
    """Target series ``[T, N]`` float32 of ``file``, checked against the spec's node and step counts."""
    if file.verify_on_load and file.checksum:
        verify_checksum(
            path, file.checksum, fix=f"delete it (it is downloaded again) or restore it from {file.url}"
        )
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
        adjacency = formats.read_edge_list(path, spec.num_nodes, ids)
    else:
        adjacency = np.asarray(formats.read_adjacency_pickle(path), dtype=np.float32)
    if adjacency.shape != (spec.num_nodes, spec.num_nodes):
        raise FormatError(
            f"{path} is a {adjacency.shape} matrix but {spec.title} has {spec.num_nodes} nodes; use the published "
            "graph file or remove it."
        )
    return adjacency, path


def load_series(
    name: str, data_dir: str | Path, download: bool = True, channel: int | None = None
) -> SeriesData:
    """Load dataset ``name`` from ``data_dir``: the target channel ``[T, N]`` float32 and its adjacency.

    Reads the first accepted file that is present (see ``DATASETS[name].files``); when none is and ``download``
    is true, fetches a pinned, checksummed mirror first. ``channel`` overrides the spec's default channel
    (Milan: 0 sms, 1 call, 2 internet). Raises a :class:`DataError` subclass with a one-sentence fix otherwise.
    """
    spec = get_spec(name)
    root = Path(data_dir).expanduser()
    file = find_file(spec, root)
    if file is None:
        if not (download and spec.downloads):
            raise _missing(spec, root, download)
        download_dataset(spec.name, root)
        file = find_file(spec, root)
        if file is None:  # a mirror whose file is not an accepted series file would be a spec bug
            raise _missing(spec, root, download)
    channel = spec.channel if channel is None else channel
    path = root / file.path
    values = _read_values(spec, file, path, channel)
    adjacency, adjacency_path = load_adjacency(spec, root)
    return SeriesData(values, adjacency, spec, path, adjacency_path, channel)


# --------------------------------------------------------------------------------------------------- listing


def dataset_status(spec: DatasetSpec, data_dir: str | Path) -> str:
    """``present (<file>)``, ``missing (downloadable)`` or ``missing`` for ``spec`` under ``data_dir``."""
    found = find_file(spec, data_dir)
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
        files = " | ".join(spec.paths)
        graphs = " | ".join(g.path for g in spec.adjacency)
        lines.append(f"    files: {files}" + (f"   graph: {graphs}" if graphs else ""))
        fetch = f"; auto-download: {', '.join(f.name for f in spec.downloads)}" if spec.downloads else ""
        lines.append(f"    from: {spec.source}{fetch}")
        lines.append(f"    licence: {spec.licence}; cite: {spec.citation}")
    if data_dir is not None:
        lines.append(f"data_dir: {Path(data_dir).expanduser().resolve()}")
    return "\n".join(lines)


def _check_specs() -> None:
    """Fail at import if a spec is inconsistent (a programming error, not a user one)."""
    for spec in DATASETS.values():
        bad = [
            f.path
            for f in spec.files
            if f.fmt not in formats.ARRAY_FORMATS or f.layout not in formats.LAYOUTS
        ]
        bad += [g.path for g in spec.adjacency if g.fmt not in formats.ADJACENCY_FORMATS]
        bad += [g.ids.path for g in spec.adjacency if g.ids is not None and g.ids.fmt != "ids"]
        if bad:
            raise ValueError(f"{spec.name}: unknown format or layout for {bad}.")
        for file in (*spec.files, *spec.downloads, *spec.adjacency):
            if (file.url is None) != (file.checksum is None):
                raise ValueError(f"{spec.name}: {file.path} needs both a url and a checksum, or neither.")
            if file.checksum is not None:
                parse_checksum(file.checksum)
        if any(f not in spec.files or not f.downloadable for f in spec.downloads):
            raise ValueError(f"{spec.name}: every download must be an accepted, checksummed series file.")


_check_specs()
