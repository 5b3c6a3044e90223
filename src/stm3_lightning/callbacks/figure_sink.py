"""Where analysis figures go: PNGs under ``<run_dir>/plots`` always, and ``wandb.Image`` on every active W&B logger."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure

from stm3_lightning.plots import save_figure

PLOTS_DIR = "plots"


@dataclass(frozen=True)
class NamedFigure:
    """A figure and the key it is logged under, e.g. ``routing/layer0/assignment_map``.

    ``per_epoch``: a snapshot of one evaluation, written as ``<key>_epoch<NNN>.png``; False for cumulative plots
    (e.g. a metric over epochs), whose PNG ``<key>.png`` is overwritten by each evaluation.
    """

    key: str
    figure: Figure
    per_epoch: bool = True

    def png_path(self, plots_dir: Path, epoch: int) -> Path:
        """The PNG file of this figure for an evaluation at ``epoch``."""
        suffix = f"_epoch{epoch:03d}" if self.per_epoch else ""
        return plots_dir / f"{self.key}{suffix}.png"


def active_wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    """The trainer's W&B loggers whose run really records (not ``mode=disabled``)."""
    return [
        lg
        for lg in trainer.loggers
        if isinstance(lg, WandbLogger) and not getattr(lg.experiment, "disabled", False)
    ]


def log_figures(trainer: L.Trainer, run_dir: Path, figures: Sequence[NamedFigure], epoch: int) -> None:
    """Write ``figures`` of the evaluation at ``epoch`` as PNGs under ``<run_dir>/plots/<key>...`` and send them to
    every active W&B logger (step = global step). Only the global-zero process writes."""
    if not figures or not trainer.is_global_zero:
        return
    pngs = {item.key: save_figure(item.figure, item.png_path(run_dir / PLOTS_DIR, epoch)) for item in figures}
    wandb_loggers = active_wandb_loggers(trainer)
    if not wandb_loggers:
        return
    import wandb

    logged = {key: wandb.Image(str(png), caption=f"epoch {epoch}") for key, png in pngs.items()}
    for lg in wandb_loggers:
        lg.log_metrics(logged, step=trainer.global_step)
