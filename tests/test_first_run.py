"""The first run a new user makes: `make train` trains STM3 on the synthetic default and beats persistence.

The full default (16 nodes, 10 epochs) is measured in the README; this test trains a smaller variant of the same
default configuration (8 nodes, 5 epochs, seeded) through the training entry point and compares it with the
persistence baseline on the same data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stm3_lightning.config.compose import compose
from stm3_lightning.run.train import train

SMALL = ["data.synthetic.num_nodes=8", "trainer.max_epochs=5", "callbacks.progress_bar=none", "seed=12"]


def test_default_is_stm3_on_synthetic_data_for_ten_epochs() -> None:
    cfg = compose([])
    assert (cfg.data.name, cfg.model.name, cfg.trainer.max_epochs) == ("synthetic", "stm3", 10)
    assert compose(["experiment=reproduce/pems08"]).trainer.max_epochs == 100  # paper settings keep theirs


@pytest.mark.slow
def test_default_synthetic_model_beats_persistence(tmp_path: Path) -> None:
    maes = {}
    for model in ("persistence", "stm3"):
        maes[model] = train(compose([*SMALL, f"model={model}", f"paths.output_dir={tmp_path / model}"]))[
            "overall"
        ]["mae"]
        os.environ.pop("STM3_RUN_DIR", None)
    assert maes["stm3"] < 0.95 * maes["persistence"], maes
