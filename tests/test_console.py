"""What `stm3 train` prints when its output is not a terminal: every log line once, no advertisements or known
deprecation noise, plain progress lines, and where the run's files are at the end."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import RichProgressBar

from stm3_lightning.callbacks.plain_progress import PlainProgress
from stm3_lightning.console import DropAdvertisements, configure_console
from stm3_lightning.run.builders import progress_bar

RUN = [
    "model=linear",
    "data.synthetic.num_nodes=4",
    "data.synthetic.num_steps=700",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.progress_every_n_steps=2",
    "logger.wandb.mode=offline",
]


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """`stm3 train` with stdout and stderr captured (not a terminal): run folder, stdout, stderr."""
    out = tmp_path_factory.mktemp("console") / "run"
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("STM3_RUN_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "stm3_lightning.cli", "train", *RUN, f"paths.output_dir={out}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, proc.stderr


def test_every_log_line_is_printed_once(piped_run: tuple[Path, str, str]) -> None:
    _, _, err = piped_run
    lines = [line for line in err.splitlines() if line.startswith("INFO")]
    assert any("Seed set to 12" in line for line in lines) and any("windows:" in line for line in lines)
    assert not [line for line in lines if line.startswith("INFO: ")]  # Lightning's own duplicate handler
    assert [line for line, n in Counter(lines).items() if n > 1] == []


def test_no_advertisements_or_known_deprecation_noise(piped_run: tuple[Path, str, str]) -> None:
    _, out, err = piped_run
    for noise in ("💡", "litlogger", "LeafSpec", "anonymous setting"):
        assert noise not in err and noise not in out, noise


def test_progress_is_plain_lines_when_output_is_not_a_terminal(piped_run: tuple[Path, str, str]) -> None:
    _, out, _ = piped_run
    steps = re.findall(r"^epoch (\d)/2  step (\d)/4  train/loss=\S+  \S+ it/s  eta \S+$", out, re.M)
    assert steps == [("1", "2"), ("1", "4"), ("2", "2"), ("2", "4")]
    assert len(re.findall(r"^epoch \d/2  validation  val/loss=\S+ .*\(\d+\.\d s\)$", out, re.M)) == 2
    assert "•" not in out and "it/s •" not in out  # no rich progress bar


def test_the_end_says_where_the_run_checkpoints_and_wandb_run_are(piped_run: tuple[Path, str, str]) -> None:
    run, out, _ = piped_run
    (offline,) = run.glob("wandb/offline-run-*")
    tail = out.splitlines()
    assert f"run folder:      {run.resolve()}" in tail
    assert any(
        line.startswith(f"checkpoints:     {(run / 'checkpoints').resolve()} (best best-") for line in tail
    )
    assert f"W&B offline run: {offline.resolve()}" in tail
    assert f"upload it with:  wandb sync {offline.resolve()}" in tail


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_auto_progress_bar_is_rich_on_a_terminal_and_plain_otherwise() -> None:
    assert isinstance(progress_bar("auto", 5, stdout=_Stream(tty=True)), RichProgressBar)
    plain = progress_bar("auto", 5, stdout=_Stream(tty=False))
    assert isinstance(plain, PlainProgress) and plain.every_n_steps == 5
    assert isinstance(progress_bar("plain", 7, stdout=_Stream(tty=True)), PlainProgress)
    assert progress_bar("none", 5) is None
    with pytest.raises(ValueError, match="progress_every_n_steps must be >= 1"):
        PlainProgress(0)


def test_configure_console_removes_lightnings_own_handler_and_filters_tips() -> None:
    configure_console()
    configure_console()  # idempotent
    assert logging.getLogger("lightning").handlers == []
    tip = logging.LogRecord("lightning.pytorch", logging.INFO, "", 0, "💡 Tip: try litlogger", None, None)
    kept = logging.LogRecord("lightning.pytorch", logging.INFO, "", 0, "GPU available: False", None, None)
    assert not DropAdvertisements().filter(tip) and DropAdvertisements().filter(kept)
