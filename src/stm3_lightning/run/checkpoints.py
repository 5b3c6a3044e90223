"""Checkpoint files: safe loading, what they were trained on, and whether they fit the model being built.

Every checkpoint written by a run carries ``checkpoint["stm3"]`` (model name, dataset, node count, input length,
horizon) so that ``stm3 eval`` and ``stm3 train resume=...`` can refuse, in one sentence, a checkpoint of another
model or dataset before Lightning fails with a long ``load_state_dict`` traceback. Files are always read with
``torch.load(weights_only=True)``: a checkpoint that needs arbitrary unpickling is refused, never executed.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch import nn

from stm3_lightning.types import DataInfo

META_KEY = "stm3"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe or does not fit the configured model."""


def run_metadata(cfg: DictConfig, info: DataInfo) -> dict[str, Any]:
    """What a checkpoint of this run is trained on (stored under ``checkpoint["stm3"]``)."""
    return {
        "model": str(cfg.model.name),
        "dataset": str(cfg.data.name),
        "num_nodes": int(info.num_nodes),
        "input_len": int(info.input_len),
        "horizon": int(info.horizon),
    }


class CheckpointMetadata(Callback):
    """Adds :func:`run_metadata` to every checkpoint the trainer writes."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        self.metadata = dict(metadata)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[META_KEY] = dict(self.metadata)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (tensors on CPU), read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {path} does not exist; pass the path of a .ckpt file written by a run."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Checkpoint {path} holds Python objects that only a full unpickler could load (which can run code), "
            "so it is refused; re-save its state_dict with torch.save from a trusted session."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt ({type(exc).__name__}); use another checkpoint of the run "
            "(e.g. checkpoints/best-*.ckpt) or retrain."
        ) from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (no state_dict); pass a .ckpt written by `stm3 train`."
        )
    return ckpt


def _describe(meta: dict[str, Any]) -> str:
    return (
        f"model '{meta.get('model')}' on {meta.get('dataset')} with {meta.get('num_nodes')} nodes, "
        f"input_len {meta.get('input_len')}, horizon {meta.get('horizon')}"
    )


def check_metadata(path: str | Path, saved: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` when the checkpoint's model, node count or window differs from ``expected``.

    The dataset name alone may differ (e.g. evaluating on another file of the same graph).
    """
    if not saved:
        return
    keys = ("model", "num_nodes", "input_len", "horizon")
    if any(saved.get(k) != expected.get(k) for k in keys):
        raise CheckpointError(
            f"Checkpoint {path} was trained for {_describe(saved)}, but this run builds {_describe(expected)}; "
            "use a checkpoint of the same model and data shape, or change the config to match it."
        )


def check_state_dict(path: str | Path, state: dict[str, Any], module: nn.Module) -> None:
    """Raise :class:`CheckpointError` naming the first parameter whose presence or shape differs."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"'{missing[0]}' is missing" if missing else f"'{unexpected[0]}' is unexpected"
        raise CheckpointError(
            f"Checkpoint {path} does not fit the configured model ({len(missing)} parameters missing, "
            f"{len(unexpected)} unexpected; {first}); it was trained with another model or config."
        )
    for key, value in own.items():
        theirs = state[key]
        if tuple(theirs.shape) != tuple(value.shape):
            raise CheckpointError(
                f"Checkpoint {path} does not fit the configured model: '{key}' has shape {list(theirs.shape)} "
                f"there but {list(value.shape)} here; it was trained with another model, node count or window."
            )


def check_compatible(path: str | Path, module: nn.Module, expected: dict[str, Any]) -> dict[str, Any]:
    """Load the checkpoint at ``path`` and check it fits ``module`` (built for ``expected``); return it."""
    ckpt = load_checkpoint(path)
    check_metadata(path, ckpt.get(META_KEY), expected)
    check_state_dict(path, ckpt["state_dict"], module)
    return ckpt


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """``<run_dir>/checkpoints/last.ckpt`` when it exists."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None
