"""What a dataset is: its files, how to read them, and its default benchmark protocol.

A :class:`DatasetSpec` is one entry of the catalogue (:mod:`stm3_lightning.data.catalogue`), the single source of
truth for each dataset: ``configs/data/<name>.yaml`` is written from its :class:`Protocol`
(:mod:`stm3_lightning.data.configs`), the model is sized from it before any data is read, and
:mod:`stm3_lightning.data.reading` and :mod:`stm3_lightning.data.download` find, fetch and read its files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stm3_lightning.config.schema import DataConfig
from stm3_lightning.data.errors import MissingDataError
from stm3_lightning.types import DataInfo


@dataclass(frozen=True)
class DataFile:
    """One file a dataset accepts, relative to ``data_dir``, and how to read it.

    fmt: a :data:`formats.ARRAY_FORMATS` entry for series files, :data:`graph_formats.ADJACENCY_FORMATS` for graphs.
    key: array name (npz), variable (mat, ``None`` = the only one) or DataFrame name (hdf, ``None`` = the only one).
    layout: ``TNC`` (``[T, N]`` or ``[T, N, C]``) or ``SDN`` (``[slot of day, day, node]``).
    ranks: the array ranks the published file has (``(3,)`` for files released as ``[T, N, C]``, which a
    ``[T, N]`` array cannot be); other ranks are refused.
    last_column: CSV column moved to the end (Electricity ``OT``).
    ids: for edge lists with sensor ids, the file listing the ids in node order.
    url, checksum: a pinned download (``sha256:<hex>`` or ``gitsha1:<hex>``); both or neither.
    verify_on_load: check ``checksum`` whenever the data is prepared (only for small canonical files).
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
    """A dataset's default benchmark protocol (reference §5): the values of ``configs/data/<name>.yaml``.

    summary: what the protocol is, in a sentence or two (the YAML file's header comment).
    """

    summary: str
    split_mode: str = "ratio"
    split_ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_borders: tuple[int, ...] = ()
    per_node: bool = False
    real_value: bool = True
    null_val: float = 0.0
    input_len: int = 96
    horizon: int = 96
    batch_size: int = 64
    eval_batch_size: int = 64


@dataclass(frozen=True)
class DatasetSpec:
    """Everything known about one dataset.

    files: accepted series files, read in this order when several are present (the release's name first).
    downloads: series files fetched, in this order, when none is present and downloading is allowed.
    adjacency: accepted graph files (optional; fetched alongside a downloaded series when they have a URL).
    channel: the default target channel of multi-channel files.
    generated: the series is generated from ``data.synthetic.*`` (no files; ``num_nodes`` is its default size).
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
    protocol: Protocol = field(default_factory=lambda: Protocol(""))
    downloads: tuple[DataFile, ...] = ()
    adjacency: tuple[DataFile, ...] = ()
    channel: int = 0
    aliases: tuple[str, ...] = ()
    generated: bool = False
    note: str = ""

    @property
    def paths(self) -> tuple[str, ...]:
        """Relative paths of the accepted series files."""
        return tuple(f.path for f in self.files)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(f.url for f in self.downloads if f.url)

    def find_file(self, data_dir: str | Path) -> DataFile | None:
        """The first accepted series file present under ``data_dir``, or ``None``."""
        root = Path(data_dir).expanduser()
        return next((f for f in self.files if (root / f.path).is_file()), None)

    def where(self, root: Path) -> str:
        """'one of A, B' naming every accepted file under ``root``."""
        names = [str(root / f.path) for f in self.files]
        return names[0] if len(names) == 1 else "one of " + ", ".join(names)

    def missing_error(self, root: Path, download: bool) -> MissingDataError:
        """The error for no series file under ``root``: where to place one (and how to fetch it, if possible)."""
        hint = ""
        if self.downloads and not download:
            hint = f", or allow downloading (data.download=true) to fetch it from {self.downloads[0].url}"
        return MissingDataError(
            f"No {self.title} data found: place {self.where(root)} (from {self.source}){hint}."
        )

    def data_info(self, cfg: DataConfig) -> DataInfo:
        """The shapes a model is built for under ``cfg``, known without reading any data."""
        num_nodes = cfg.synthetic.num_nodes if self.generated else self.num_nodes
        return DataInfo(
            num_nodes=int(num_nodes),
            input_len=cfg.input_len,
            horizon=cfg.horizon,
            steps_per_day=cfg.steps_per_day,
            period=cfg.steps_per_day,
        )
