"""What a run ran on (recorded in ``test_metrics.json``): CPU model, threads, torch version, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from stm3_lightning.config.compose import project_root


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s first ``model name``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(root: Path | None = None) -> str:
    """``<sha>`` of the checkout holding the code (``<sha>-dirty`` with uncommitted changes), or ``unknown``."""
    where = str(root or project_root())
    try:
        sha = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if status else sha


def machine_info() -> dict[str, object]:
    """``cpu``, ``cpu_count``, ``torch_threads``, ``torch``, ``cuda`` (device name or none) and ``git_commit``."""
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "git_commit": git_commit(),
    }
