"""``last.ckpt`` is rewritten every N steps, at every epoch end (after the best checkpoint) and on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stm3_lightning.callbacks.last_checkpoint import LastCheckpoint


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = (self.lin(x) - y).pow(2).mean()
        self.log("loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Recording(LastCheckpoint):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[int] = []

    def _save(self, trainer: L.Trainer) -> None:
        super()._save(trainer)
        self.steps.append(trainer.global_step)


class SigtermAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer._signal_connector.received_sigterm = True  # what Lightning's SIGTERM handler sets


def fit(tmp_path: Path, callbacks: list[Callback], epochs: int = 2) -> None:
    L.seed_everything(0)
    x = torch.randn(64, 2)
    data = DataLoader(TensorDataset(x, x @ torch.tensor([[1.0], [-2.0]])), batch_size=4)
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(Regression(), data)


def test_saves_every_n_steps_and_at_epoch_end_after_the_best(tmp_path: Path) -> None:
    best = ModelCheckpoint(dirpath=tmp_path, filename="best-{epoch}", monitor="loss", save_top_k=1)
    last = Recording(tmp_path / "last.ckpt", every_n_train_steps=5)
    fit(tmp_path, [best, last])
    assert last.steps == [5, 10, 15, 16, 20, 25, 30, 32]
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 32
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["best_model_path"] == str(tmp_path / "best-epoch=1.ckpt")  # this epoch's best is recorded


def test_epoch_end_only(tmp_path: Path) -> None:
    last = Recording(tmp_path / "last.ckpt")
    fit(tmp_path, [last])
    assert last.steps == [16, 32] and last.last_model_path == str(tmp_path / "last.ckpt")


def test_sigterm_saves_the_finished_step(tmp_path: Path) -> None:
    last = Recording(tmp_path / "last.ckpt", every_n_train_steps=100)
    with pytest.raises(SIGTERMException):
        fit(tmp_path, [last, SigtermAt(7)])
    assert last.steps == [8] and last.sigterm_step == 8
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert (
        ckpt["global_step"] == 8
        and ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 8
    )
