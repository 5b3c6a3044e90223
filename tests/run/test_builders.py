"""Builders: nothing is loaded before a Trainer exists; the module takes the datamodule's scaler in setup."""

from __future__ import annotations

import lightning as L
import torch

from stm3_lightning.config.compose import compose
from stm3_lightning.run.builders import build_datamodule, build_forecaster

TINY = [
    "model=linear",
    "data.synthetic.num_nodes=4",
    "data.synthetic.num_steps=400",
    "logger.wandb.mode=disabled",
]


def test_module_is_sized_from_the_catalogue_and_scaled_in_setup() -> None:
    cfg = compose(TINY)
    dm = build_datamodule(cfg)
    module = build_forecaster(cfg, dm.info)
    assert not dm.datasets and module.mean.shape == (4,)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        limit_val_batches=1,
    )
    trainer.validate(module, datamodule=dm, verbose=False)
    mean, std = dm.scaler.tensors()
    assert torch.equal(module.mean, mean.float()) and torch.equal(module.std, std.float())
    assert not torch.equal(module.mean, torch.zeros(4))
