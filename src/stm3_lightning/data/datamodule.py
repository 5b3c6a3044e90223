"""One ``LightningDataModule`` for every spatio-temporal dataset: load, protocol split, scale, window."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from stm3_lightning.config.schema import DataConfig
from stm3_lightning.data.catalogue import data_info, get_spec
from stm3_lightning.data.errors import DataError
from stm3_lightning.data.reading import prepare_files, read_series
from stm3_lightning.data.scaler import ScalerError, StandardScaler
from stm3_lightning.data.splits import SPLIT_NAMES, Segment, SplitError, make_segments, train_rows
from stm3_lightning.data.windows import WindowDataset, collate_batch, time_features
from stm3_lightning.types import DataInfo

log = logging.getLogger(__name__)


def check_finite(values: np.ndarray, cfg: DataConfig) -> None:
    """Enforce ``data.nan_policy=fail`` on ``values: [T, N]`` (under ``mask`` NaN/inf become missing entries)."""
    bad = ~np.isfinite(values)
    if cfg.nan_policy == "fail" and bad.any():
        t, n = np.argwhere(bad)[0]
        raise DataError(
            f"The {cfg.name} series has {int(bad.sum())} NaN/inf values (first at step {t}, node {n}); "
            "clean the file or set data.nan_policy=mask to treat them as missing."
        )


class SpatioTemporalDataModule(L.LightningDataModule):
    """Windows ``x: [B, L, N, C]`` (scaled value + optional time-of-day/day-of-week) and ``y: [B, H, N, 1]``
    (original units) for train/val/test, cut by the configured protocol.

    ``data.batch_size`` is the global batch size: under DDP each process loads ``batch_size // world_size``.
    Evaluation under DDP shards windows without padding, so every window is counted exactly once.
    """

    def __init__(self, cfg: DataConfig, data_dir: str | Path) -> None:
        super().__init__()
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.scaler: StandardScaler | None = None
        self.adjacency: np.ndarray | None = None
        self.segments: dict[str, Segment] = {}
        self.datasets: dict[str, WindowDataset] = {}
        self.num_nodes: int | None = None

    def prepare_data(self) -> None:
        """Once per node (rank 0): make the dataset's file present (download when allowed) and verify it, without
        loading it."""
        prepare_files(get_spec(self.cfg.name), self.data_dir, self.cfg.download)

    def setup(self, stage: str | None = None) -> None:
        """Every rank: read the prepared series, split, fit the scaler on the training rows and cut windows."""
        if self.datasets:
            return
        cfg = self.cfg
        values, self.adjacency = read_series(cfg, self.data_dir)
        if values.ndim != 2:
            raise DataError(f"The {cfg.name} series must be 2-D [time, nodes], got shape {values.shape}.")
        check_finite(values, cfg)
        total, self.num_nodes = values.shape
        try:
            self.segments = make_segments(cfg.split, total, cfg.input_len, cfg.horizon)
            lo, hi = train_rows(self.segments, cfg.input_len, cfg.horizon)
            self.scaler = (
                StandardScaler.fit(values[lo:hi], cfg.scaler.per_node)
                if cfg.scaler.kind == "standard"
                else StandardScaler.identity(self.num_nodes)
            )
        except (SplitError, ScalerError) as exc:
            raise DataError(f"{cfg.name}: {exc}") from exc
        inputs = torch.from_numpy(self.scaler.transform(values))[..., None]
        if cfg.time_features:
            feats = torch.from_numpy(time_features(total, cfg.steps_per_day))
            inputs = torch.cat([inputs, feats[:, None, :].expand(total, self.num_nodes, 2)], dim=-1)
        # Missing inputs (NaN/inf under nan_policy=mask) become 0 = the training mean in scaled units;
        # missing targets become null_val, which the masked protocol excludes.
        inputs = torch.nan_to_num(inputs.contiguous(), nan=0.0, posinf=0.0, neginf=0.0)
        targets = np.where(np.isfinite(values), values, np.float32(cfg.null_val)).astype(np.float32)
        targets = torch.from_numpy(targets)[..., None]
        self.datasets = {
            name: WindowDataset(inputs, targets, seg.first, seg.num_windows, cfg.input_len, cfg.horizon)
            for name, seg in self.segments.items()
        }
        counts = ", ".join(f"{n}={self.segments[n].num_windows}" for n in SPLIT_NAMES)
        log.info(
            "%s: %d steps x %d nodes, %s split, windows: %s",
            cfg.name,
            total,
            self.num_nodes,
            cfg.split.mode,
            counts,
        )

    @property
    def window_counts(self) -> dict[str, int]:
        return {name: seg.num_windows for name, seg in self.segments.items()}

    @property
    def info(self) -> DataInfo:
        """Shapes the model is built for, from the catalogue (no data is read)."""
        return data_info(self.cfg)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _sampler(self, split: str) -> Sampler | None:
        world, rank = self._world()
        if world == 1:
            return None
        if split == "train":
            return DistributedSampler(
                self.datasets[split], num_replicas=world, rank=rank, shuffle=True, seed=0
            )
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        return UnrepeatedDistributedSampler(
            self.datasets[split], num_replicas=world, rank=rank, shuffle=False
        )

    def _loader(self, split: str) -> DataLoader:
        world, _ = self._world()
        size = self.cfg.batch_size if split == "train" else self.cfg.eval_batch_size
        if size % world:
            raise DataError(
                f"data.batch_size={size} is the global batch size and must be divisible by the {world} devices; "
                "change it or trainer.devices."
            )
        sampler = self._sampler(split)
        train = split == "train"
        return DataLoader(
            self.datasets[split],
            batch_size=size // world,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and self.cfg.drop_last and len(self.datasets[split]) >= size,
            num_workers=self.cfg.num_workers,
            pin_memory=self.cfg.pin_memory,
            persistent_workers=self.cfg.num_workers > 0,
            collate_fn=collate_batch,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
