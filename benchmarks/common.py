"""Shared benchmark helpers: timing with warm-up and medians, peak memory, machine facts, models, JSON and tables.

Memory is the process resident set (RSS): PyTorch's CPU allocator has no peak counter and ``tracemalloc`` does not
see tensor storage. On Linux the kernel's high-water mark ``VmHWM`` is reset through ``/proc/self/clear_refs``, so
:class:`PeakMemory` reports the true peak of a code block; elsewhere it reports ``None``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor, nn

from stm3_lightning.models.registry import build_model
from stm3_lightning.models.stm3.config import STM3Config
from stm3_lightning.run.machine import cpu_name
from stm3_lightning.types import DataInfo

RESULTS_DIR = Path("benchmarks/results")
MIB = 2**20
# PEMSD8 96 -> 96, the STM3 README setting: 170 sensors, 10523 training windows (ratio split 6:2:2).
PEMS08_NODES, PEMS08_LEN, PEMS08_TRAIN_WINDOWS = 170, 96, 10523


# ------------------------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    """Wall-clock and process-CPU seconds of repeated runs (warm-up runs excluded)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    def as_dict(self) -> dict[str, float | list[float]]:
        return {
            "median_s": self.median,
            "min_s": min(self.wall),
            "max_s": max(self.wall),
            "cpu_median_s": statistics.median(self.cpu),
            "repeats": len(self.wall),
            "wall_s": self.wall,
        }


def timed(fn: Callable[[], object], timing: Timing) -> object:
    """Run ``fn`` once, append its wall and CPU seconds to ``timing``, return its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    timing.wall.append(time.perf_counter() - wall)
    timing.cpu.append(time.process_time() - cpu)
    return out


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Time ``fn`` ``repeats`` times after ``warmup`` untimed runs."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    for _ in range(warmup):
        fn()
    timing = Timing()
    for _ in range(repeats):
        timed(fn, timing)
    return timing


# ------------------------------------------------------------------------------------------------------ memory
def _status_kib(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float | None:
    """Current resident set size in MiB (None where /proc is unavailable)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process; False where that is not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager: peak RSS reached inside the block, absolute and above the RSS at entry (MiB)."""

    def __init__(self) -> None:
        self.start_mib: float | None = None
        self.peak_mib: float | None = None
        self._supported = False

    def __enter__(self) -> PeakMemory:
        self._supported = reset_peak_rss()
        self.start_mib = rss_mib()
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _status_kib("VmHWM")
        self.peak_mib = hwm / 1024 if self._supported and hwm is not None else None

    @property
    def extra_mib(self) -> float | None:
        """Peak minus RSS at entry: the memory the block needed beyond what was already resident."""
        if self.peak_mib is None or self.start_mib is None:
            return None
        return self.peak_mib - self.start_mib

    def as_dict(self) -> dict[str, float | None]:
        return {"peak_rss_mib": self.peak_mib, "peak_extra_mib": self.extra_mib}


def release_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``) so the next RSS peak starts from a clean base."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def available_mib() -> float | None:
    """``MemAvailable`` of the machine in MiB (None where /proc/meminfo is unavailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory_shortfall(need_mib: float, what: str, safety: float = 1.25) -> str | None:
    """A one-sentence reason why ``what`` (needing about ``need_mib``) should not run now, or None if it fits."""
    free = available_mib()
    if free is None or need_mib * safety <= free:
        return None
    return (
        f"{what} needs about {need_mib / 1024:.1f} GiB (x{safety} margin) but only {free / 1024:.1f} GiB is "
        "available; free memory or lower the batch size."
    )


# ----------------------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, object]:
    """Facts that make a measurement interpretable: CPU, threads, memory, load, versions, date."""
    from stm3_lightning.models.stm3.kernels.causal_conv import cpu_conv_kernel_available
    from stm3_lightning.models.stm3.kernels.scan import cpu_scan_kernel_available

    total = None
    try:
        total = int(Path("/proc/meminfo").read_text().split()[1]) / MIB  # kB -> GiB
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": total,
        "available_gib_at_start": (available_mib() or 0) / 1024 or None,
        "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_scan_kernel": cpu_scan_kernel_available(),
        "cpu_conv_kernel": cpu_conv_kernel_available(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def matmul_gflops(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Measured ``size x size`` matmul throughput of this machine (median over ``repeats``) in GFLOP/s."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(dtype) for _ in range(2))
    timing = measure(lambda: a @ b, repeats, warmup=2)
    return 2 * size**3 / timing.median / 1e9


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count (None keeps the default, one per core)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {threads}.")
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------ models
def stm3_info(
    num_nodes: int = PEMS08_NODES, input_len: int = PEMS08_LEN, horizon: int = PEMS08_LEN
) -> DataInfo:
    """Data shapes of the paper's PEMSD8 96 -> 96 setting (or the given sizes)."""
    return DataInfo(num_nodes=num_nodes, input_len=input_len, horizon=horizon)


def build_stm3(
    info: DataInfo, kernel_backend: str = "torch", seed: int = 0, **overrides: object
) -> nn.Module:
    """Faithful STM3 (release PEMSD8 configuration: D=4, d_e=12, 2 layers, 4 experts, scales 1,3,5,7)."""
    torch.manual_seed(seed)
    cfg = STM3Config(kernel_backend=kernel_backend, **overrides)  # type: ignore[arg-type]
    return build_model(cfg, info)


def random_batch(batch: int, info: DataInfo, channels: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """x: [B, L, N, C] standard normal, y: [B, H, N, 1] standard normal (scaled units)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, info.input_len, info.num_nodes, channels, generator=g)
    y = torch.randn(batch, info.horizon, info.num_nodes, 1, generator=g)
    return x, y


class TrainStep:
    """One optimisation step as training does it: forward, L1 loss + weighted aux losses, backward, AdamW.

    ``mean``/``std`` (scalars or [N]) map predictions back to the targets' units, like ``Forecaster`` with
    ``real_value``; the defaults compare in scaled units. The release's optimiser: AdamW(lr=3e-3, eps=1e-8).
    """

    def __init__(
        self, model: nn.Module, lr: float = 3e-3, mean: Tensor | float = 0.0, std: Tensor | float = 1.0
    ) -> None:
        self.model = model
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, eps=1e-8, weight_decay=0.0)
        self.mean = mean[:, None] if isinstance(mean, Tensor) else mean  # [N, 1] against [B, H, N, 1]
        self.std = std[:, None] if isinstance(std, Tensor) else std

    def objective(self, pred: Tensor, aux: dict[str, Tensor], y: Tensor) -> Tensor:
        """pred: [B, H, N, 1] scaled, y: [B, H, N, 1] target units -> scalar loss (+ aux losses)."""
        loss = (pred * self.std + self.mean - y).abs().mean()
        return loss + sum(aux.values()) if aux else loss

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """x: [B, L, N, C], y: [B, H, N, 1] -> scalar training objective (forward only)."""
        return self.objective(*self.model(x), y)

    def __call__(self, x: Tensor, y: Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(x, y)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


# ------------------------------------------------------------------------------------------------- reporting
def write_json(payload: dict, path: Path) -> Path:
    """Write ``payload`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A right-aligned plain-text table (floats get 4 significant digits)."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


@contextmanager
def section(title: str) -> Iterator[None]:
    """Print a section title and, on exit, its wall time."""
    print(f"\n== {title}", flush=True)
    start = time.perf_counter()
    yield
    print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)
