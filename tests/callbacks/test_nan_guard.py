"""Non-finite loss, gradient or weight: training stops naming the step, and the last checkpoint stays good."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stm3_lightning.callbacks.last_checkpoint import LastCheckpoint
from stm3_lightning.callbacks.nan_guard import NanGuard, NonFiniteError, first_nonfinite
from stm3_lightning.cli import main
from stm3_lightning.lit.forecaster import Forecaster


class Breaks(L.LightningModule):
    """Regression on random data that breaks at optimizer step ``at``: its loss, its gradient or its weights."""

    def __init__(self, at: int, what: str) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.at, self.what = at, what

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.lin(batch[0]).pow(2).mean()
        if self.global_step == self.at:
            if self.what == "loss":
                loss = loss * float("nan")
            elif self.what == "gradient":  # finite value, NaN derivative (d sqrt(u)/du at 0 is inf, times 0)
                loss = loss + torch.sqrt(self.lin.weight - self.lin.weight.detach()).sum()
            else:
                self.optimizers().param_groups[0]["lr"] = float("inf")
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, at: int, what: str) -> None:
    L.seed_everything(0)
    data = DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[NanGuard(), LastCheckpoint(tmp_path / "last.ckpt", every_n_train_steps=2)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=True,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(Breaks(at, what), data)


@pytest.mark.parametrize(
    "what, detail",
    [
        ("loss", "because the training loss became nan"),
        ("gradient", "because the gradient of 'lin.weight' became non-finite"),
        ("weights", "because the weight 'lin.weight' became non-finite in that step's optimizer update"),
    ],
)
def test_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path, what: str, detail: str) -> None:
    with pytest.raises(NonFiniteError) as info:
        fit(tmp_path, at=5, what=what)
    message = str(info.value)
    assert message.startswith(f"Training stopped at step 5 (epoch 0) {detail}; the last good checkpoint is ")
    assert str(tmp_path / "last.ckpt") in message and "\n" not in message
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_failure_before_any_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteError, match="at step 0 .* no checkpoint had been written yet"):
        fit(tmp_path, at=0, what="loss")


def test_first_nonfinite() -> None:
    ok, bad = torch.ones(3), torch.tensor([1.0, float("inf")])
    assert first_nonfinite([("a", ok), ("b", None)]) is None
    assert first_nonfinite([("a", ok), ("b", bad), ("c", bad)]) == "b"
    assert first_nonfinite([]) is None


def test_cli_names_the_step_and_keeps_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A model whose loss turns NaN at step 5, run through ``stm3 train``: exit 2, one sentence, good last.ckpt."""
    original = Forecaster.training_step

    def nan_at_step_5(self: Forecaster, batch, batch_idx: int) -> torch.Tensor:
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == 5 else loss

    monkeypatch.setattr(Forecaster, "training_step", nan_at_step_5)
    out = tmp_path / "run"
    code = main(
        ["train", "model=linear", "data.synthetic.num_nodes=4", "data.synthetic.num_steps=700",
         "callbacks.progress_bar=none", "logger.wandb.mode=disabled", "callbacks.checkpoint.every_n_train_steps=2",
         f"paths.output_dir={out}"]
    )  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith(
        "error: Training stopped at step 5 (epoch 0) because the training loss became nan"
    )
    assert f"the last good checkpoint is {out / 'checkpoints' / 'last.ckpt'}" in errors[0]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    assert not (out / "test_metrics.json").exists()
