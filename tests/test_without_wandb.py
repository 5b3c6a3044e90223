"""A training run needs no wandb: with ``import wandb`` failing, the package imports, and training runs with
``logger=csv`` and with the default (offline W&B) logger, which falls back to CSV only with one INFO line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, logging, sys
    from pathlib import Path

    class NoWandb(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "wandb" or name.startswith("wandb."):
                raise ImportError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, NoWandb())
    logging.basicConfig(level=logging.INFO)  # the fallback is announced in one INFO line
    import stm3_lightning
    from stm3_lightning.config.compose import compose
    from stm3_lightning.run.train import train

    tiny = ["model=stm3", "model.hidden_dim=2", "model.node_emb_dim=4", "data.synthetic.num_nodes=5",
            "data.synthetic.num_steps=400", "data.input_len=12", "data.horizon=6", "trainer.max_epochs=1",
            "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
            "callbacks.progress_bar=none"]
    out = Path(sys.argv[1])
    for name, logger in (("csv", ["logger=csv"]), ("default", [])):
        results = train(compose([*tiny, *logger, f"paths.output_dir={out / name}"]))
        assert results["overall"]["mae"] > 0
        assert (out / name / "csv" / "metrics.csv").is_file(), name
        assert not (out / name / "wandb").exists(), name
    assert not any(m == "wandb" or m.startswith("wandb.") for m in sys.modules)
    print("OK without wandb")
    """
)


@pytest.mark.slow  # two tiny training runs in a fresh interpreter (~20-50 s)
def test_training_runs_without_wandb(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # default logger: offline W&B
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK without wandb" in proc.stdout
    assert "the wandb package is not installed; logging to CSV only" in proc.stderr
