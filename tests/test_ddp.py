"""Multi-process (DDP, gloo on CPU) training and evaluation give exactly the single-process metrics.

Evaluation shards windows without padding (``UnrepeatedDistributedSampler``) and sums the metric states across
processes, so validation/test metrics of 2 processes equal those of 1 process on the same checkpoint. The splits
have an odd number of windows, so a padding sampler (a repeated window) would change them: the negative control
shows that it does, i.e. that these tests can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch.utils.data import DistributedSampler, Sampler

from stm3_lightning.callbacks.rng_state import RngState
from stm3_lightning.config.compose import compose
from stm3_lightning.data.datamodule import SpatioTemporalDataModule
from stm3_lightning.run.builders import build_datamodule, build_forecaster, load_before_writing

TINY = [
    "model=linear",
    "data.synthetic.num_nodes=6",
    "data.synthetic.num_steps=700",  # 105 val and 105 test windows: odd, so padding would show
    "logger.wandb.mode=disabled",
    "callbacks.progress_bar=none",
]
TOL = 1e-6


class PaddingEvalDataModule(SpatioTemporalDataModule):
    """What a naive DDP setup does: ``DistributedSampler`` for evaluation too (pads by repeating windows)."""

    def _sampler(self, split: str) -> Sampler | None:
        world, rank = self._world()
        if world == 1 or split == "train":
            return super()._sampler(split)
        return DistributedSampler(self.datasets[split], num_replicas=world, rank=rank, shuffle=False)


def make_trainer(devices: int, strategy: str = "ddp_fork", **kwargs: object) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[DictConfig, Path]:
    """A linear model trained for a few steps on tiny synthetic data, saved as a checkpoint."""
    cfg = compose(TINY)
    L.seed_everything(0)
    dm = build_datamodule(cfg)
    trainer = make_trainer(1, max_epochs=1, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(build_forecaster(cfg, dm.info), datamodule=dm)
    path = tmp_path_factory.mktemp("ddp") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return cfg, path


def padding_datamodule(cfg: DictConfig) -> SpatioTemporalDataModule:
    dm = PaddingEvalDataModule(cfg.data, cfg.paths.data_dir)
    dm.setup()
    return dm


def evaluate(
    cfg: DictConfig,
    ckpt: Path,
    stage: str,
    devices: int,
    make_dm: Callable[[DictConfig], SpatioTemporalDataModule],
) -> tuple[dict[str, float], int]:
    """Logged metrics of ``trainer.<stage>`` on ``devices`` processes, and the number of windows evaluated."""
    dm = make_dm(cfg)
    load_before_writing(dm)  # as `stm3 eval` does in the launching process: window counts known here
    module = build_forecaster(cfg, dm.info)  # fresh module and metric states for every run
    run = getattr(make_trainer(devices), stage)
    logged = run(module, datamodule=dm, ckpt_path=str(ckpt), weights_only=True, verbose=False)[0]
    split = "val" if stage == "validate" else "test"
    return {k: float(v) for k, v in logged.items()}, dm.window_counts[split]


def max_rel_diff(a: dict[str, float], b: dict[str, float]) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) / max(1.0, abs(b[k])) for k in a)


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_two_process_metrics_equal_single_process(checkpoint: tuple[DictConfig, Path], stage: str) -> None:
    cfg, ckpt = checkpoint
    single, windows = evaluate(cfg, ckpt, stage, 1, build_datamodule)
    ddp, _ = evaluate(cfg, ckpt, stage, 2, build_datamodule)
    assert windows % 2 == 1
    prefix = "val/" if stage == "validate" else "test/"
    assert {f"{prefix}mae", f"{prefix}rmse", f"{prefix}mape", f"{prefix}mae@12"} <= single.keys()
    assert max_rel_diff(ddp, single) <= TOL
    assert not torch.distributed.is_initialized()


def test_padding_sampler_would_change_test_metrics(checkpoint: tuple[DictConfig, Path]) -> None:
    """Negative control: with a padding sampler one window is counted twice and the metrics move."""
    cfg, ckpt = checkpoint
    single, _ = evaluate(cfg, ckpt, "test", 1, build_datamodule)
    padded, _ = evaluate(cfg, ckpt, "test", 2, padding_datamodule)
    assert max_rel_diff(padded, single) > 100 * TOL


STM3_TINY = [
    "model=stm3",
    "data.synthetic.num_nodes=6",
    "data.synthetic.num_steps=700",
    "data.input_len=12",
    "data.horizon=6",
    "model.hidden_dim=2",
    "model.node_emb_dim=4",
    "model.d_state=4",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "logger.wandb.mode=disabled",
    "callbacks.progress_bar=none",
]


# Parameters whose gradient is float noise: a key bias (softmax is shift-invariant: its gradient is exactly 0) and
# the released router gate (~1e-8 gradient). AdamW turns noise of either sign into steps of ±lr, so they differ
# between any two summation orders (also between one-process runs with different thread counts).
NOISE_DRIVEN = ("attention.k_proj.bias", "router.gate.weight")


def fit_stm3(cfg: DictConfig, devices: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Weights and logged metrics after a short fit on ``devices`` processes (same global batch)."""
    L.seed_everything(cfg.seed)
    dm = build_datamodule(cfg)
    module = build_forecaster(cfg, dm.info)
    trainer = make_trainer(
        devices,
        # 6 nodes leave some of the 4 experts without rows: DDP must allow parameters without gradient.
        strategy="ddp_fork_find_unused_parameters_true",
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=3,
        num_sanity_val_steps=1,
        callbacks=[RngState()],
    )
    trainer.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {k: v.clone() for k, v in module.state_dict().items()}, metrics


@pytest.mark.parametrize("contrastive", ["released", "repaired"])
def test_ddp_stm3_training_equals_single_process(contrastive: str) -> None:
    """2 processes with half the global batch each train STM3 as 1 process does: the contrastive loss and its random
    negatives are those of the global batch, the router noise is drawn for the global batch (also in evaluation),
    and the launch's re-seeding is undone. Before, the negatives came from the local half-batch."""
    cfg = compose([*STM3_TINY, f"model.contrastive={contrastive}"])
    single_w, single = fit_stm3(cfg, 1)
    ddp_w, ddp = fit_stm3(cfg, 2)
    assert {"val/loss", "train/aux/contrastive/layer0"} <= single.keys()
    for key in ("val/loss", "val/rmse", "train/aux/contrastive/layer1"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-5), key
    for name, value in single_w.items():
        if not name.endswith(NOISE_DRIVEN):
            assert torch.allclose(ddp_w[name], value, rtol=1e-5, atol=1e-5), name
    assert not torch.distributed.is_initialized()


class RecordBatchSizes(Callback):
    """Appends ``<stage> <batch size>`` lines to ``<out>/rank<k>.txt`` (DDP workers cannot return objects)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def _write(self, trainer: L.Trainer, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        with (self.out / f"rank{trainer.global_rank}.txt").open("a") as handle:
            handle.write(f"{stage} {batch[0].shape[0]}\n")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        self._write(trainer, "train", batch)

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._write(trainer, "val", batch)


def test_global_batch_size_is_split_across_processes(tmp_path: Path) -> None:
    cfg = compose([*TINY, "data.batch_size=32", "data.eval_batch_size=64"])
    dm = build_datamodule(cfg)
    trainer = make_trainer(
        2,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[RecordBatchSizes(tmp_path)],
    )
    trainer.fit(build_forecaster(cfg, dm.info), datamodule=dm)
    for rank in (0, 1):
        lines = (tmp_path / f"rank{rank}.txt").read_text().split("\n")
        assert lines[:3] == ["train 16", "train 16", "val 32"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("STM3_RUN_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "stm3_lightning.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_results_match(ddp: dict, single: dict) -> None:
    for group in ("overall", "horizons"):
        for key, value in single[group].items():
            assert ddp[group][key] == pytest.approx(value, rel=TOL, abs=TOL), f"{group}/{key}"
    for key, values in single["per_step"].items():
        assert ddp["per_step"][key] == pytest.approx(values, rel=TOL, abs=TOL), f"per_step/{key}"


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["synthetic", "pems08"])
def test_cli_ddp_run_equals_single_process_eval(
    dataset: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`stm3 train trainer=ddp_cpu` (2 processes, Lightning's subprocess launcher) exits cleanly, and its
    test_metrics.json equals a 1-process `stm3 eval` of the same checkpoint to 1e-6."""
    if dataset == "pems08":
        data_dir = request.getfixturevalue("real_data_dir")
        data = ["data=pems08", f"paths.data_dir={data_dir}", "data.input_len=13", "data.horizon=12"]
    else:
        data = []
    run = tmp_path / "run"
    train = run_cli(
        "train",
        *TINY,
        *data,
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        f"paths.output_dir={run}",
    )
    assert train.returncode == 0, train.stderr[-3000:]
    ddp = json.loads((run / "test_metrics.json").read_text())
    assert ddp["windows"]["test"] % 2 == 1
    ckpt = Path(ddp["checkpoint"])
    single_run = run_cli("eval", f"ckpt={ckpt}", "trainer.devices=1", "trainer.strategy=auto")
    assert single_run.returncode == 0, single_run.stderr[-3000:]
    single = json.loads(next((run / "eval").rglob("test_metrics.json")).read_text())
    assert_results_match(ddp, single)


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook_find_unused_parameters_true"])
def test_worker_only_strategies_are_refused_before_any_work(
    strategy: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from stm3_lightning.cli import main

    code = main(
        [
            "train",
            *TINY,
            "trainer=ddp_cpu",
            f"trainer.strategy={strategy}",
            f"paths.output_dir={tmp_path / 'r'}",
        ]
    )
    assert code == 2
    assert (
        f"trainer.strategy={strategy} runs training and testing in worker processes"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "ok"), [("ddp", True), ("ddp_find_unused_parameters_false", False)], ids=["ddp", "strict"]
)
def test_cli_ddp_with_stm3_accepts_experts_without_rows(strategy: str, ok: bool, tmp_path: Path) -> None:
    """With 6 nodes some of STM3's 4 top-1 experts get no rows on a process in a step: plain `trainer.strategy=ddp`
    must train through that (it runs as ddp_find_unused_parameters_true), while the strict flavour still refuses."""
    train = run_cli(
        "train",
        *STM3_TINY,
        "trainer=ddp_cpu",
        f"trainer.strategy={strategy}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "callbacks.routing.enabled=false",
        "callbacks.disentanglement.enabled=false",
        f"paths.output_dir={tmp_path / 'run'}",
    )
    assert (train.returncode == 0) is ok, train.stderr[-3000:]
    if ok:
        assert "runs as ddp_find_unused_parameters_true" in train.stderr
        assert (tmp_path / "run" / "test_metrics.json").is_file()
    else:
        assert "find_unused_parameters" in train.stderr
