"""``stm3 eval``: the run's own config, results in ``<run>/eval/<ckpt>/``, the training run's files untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stm3_lightning.cli import main
from stm3_lightning.config.compose import ConfigError
from stm3_lightning.run.evaluation import config_for_checkpoint, run_dir_of

RUN = [
    "model=linear",
    "data.synthetic.num_nodes=4",
    "data.synthetic.num_steps=700",
    "data.input_len=12",
    "data.horizon=3",
    "trainer.max_epochs=1",
    "callbacks.progress_bar=none",
    "logger.wandb.mode=disabled",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "run"
    assert main(["train", *RUN, f"paths.output_dir={path}"]) == 0
    return path


def test_eval_writes_next_to_the_run_and_never_over_it(run: Path) -> None:
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))
    before = (run / "test_metrics.json").read_bytes()
    assert main(["eval", f"ckpt={ckpt}"]) == 0
    assert main(["eval", f"ckpt={ckpt}", "data.eval_batch_size=7"]) == 0
    assert (run / "test_metrics.json").read_bytes() == before
    first = json.loads((run / "eval" / ckpt.stem / "test_metrics.json").read_text())
    second = json.loads((run / "eval" / f"{ckpt.stem}-1" / "test_metrics.json").read_text())
    assert first["overall"] == pytest.approx(json.loads(before)["overall"], rel=1e-6)
    assert second["overall"] == pytest.approx(first["overall"], rel=1e-6)


def test_checkpoint_outside_a_run_uses_the_command_line_config(run: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "weights" / "model.ckpt"
    foreign.parent.mkdir()
    shutil.copy(run / "checkpoints" / "last.ckpt", foreign)
    assert run_dir_of(foreign) is None
    out = tmp_path / "out"
    assert main(["eval", f"ckpt={foreign}", *RUN, f"paths.output_dir={out}"]) == 0
    assert json.loads((out / "test_metrics.json").read_text())["checkpoint"] == str(foreign)
    assert (out / "config.yaml").is_file()


def test_run_config_is_found_and_groups_cannot_change(run: Path) -> None:
    ckpt = run / "checkpoints" / "last.ckpt"
    assert run_dir_of(ckpt) == run
    cfg, found = config_for_checkpoint(ckpt, ["data.eval_batch_size=5"])
    assert found == run and cfg.data.eval_batch_size == 5 and cfg.data.synthetic.num_nodes == 4
    with pytest.raises(ConfigError, match="model=persistence cannot change"):
        config_for_checkpoint(ckpt, ["model=persistence"])
