"""Build, cache and load the C++ CPU kernels of ``csrc/`` (the one loader).

A kernel is a ``csrc/<name>.cpp`` that includes ``prelude.h``. On first use it is compiled with the system C++
compiler (``$CXX``, else ``c++`` or ``g++``) into a shared library under :func:`kernel_cache_dir`, named by the
SHA-256 of everything that shapes the binary (sources, compiler, machine, CPU flags, compile flags, the
:data:`~.constants.DEFINES`), and loaded with ``ctypes``. ``STM3_CPU_KERNELS=0`` disables every kernel. Any
failure warns once and reports the kernel unavailable; the ops then run their PyTorch code.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from torch import Tensor

from stm3_lightning.models.stm3.kernels.backends import warn_once
from stm3_lightning.models.stm3.kernels.constants import DEFINES

CSRC = Path(__file__).with_name("csrc")
"""The kernel sources (shipped as package data)."""

_FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512"),
    ("-O3", "-march=native"),
    ("-O3",),
)


def kernel_cache_dir() -> Path:
    """``$STM3_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/stm3_lightning/kernels`` (default ``~/.cache/...``)."""
    root = os.environ.get("STM3_KERNEL_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stm3_lightning" / "kernels"


def _cpu_signature() -> str:
    try:
        flags = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")]
    except OSError:
        flags = []
    return flags[0] if flags else platform.processor()


def _define_flags() -> list[str]:
    return [f"-D{name}={value}" for name, value in sorted(DEFINES.items())]


def _compile(compiler: str, source: Path, target: Path) -> str | None:
    """Compile ``source`` into the shared library ``target``; returns the last error message, None on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    error = "no flag set tried"
    for flags in _FLAG_SETS:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            cmd = [compiler, *flags, "-std=c++17", "-fPIC", "-shared", *_define_flags(), f"-I{CSRC}"]
            cmd += [str(source), "-o", str(out)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as exc:
                return str(exc)
            if done.returncode == 0:
                os.replace(out, target)
                return None
            error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
    return error


def _cache_key(compiler: str, source: Path) -> str:
    headers = [p.read_text() for p in sorted(CSRC.glob("*.h"))]
    parts = [source.read_text(), *headers, compiler, platform.machine(), _cpu_signature()]
    parts += [repr(_FLAG_SETS), repr(_define_flags())]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


@functools.cache
def load_cpu_kernel(source: Path) -> ctypes.CDLL | None:
    """Compile ``source`` once (cached on disk) and load it; None, with a one-time warning, if impossible."""
    if os.environ.get("STM3_CPU_KERNELS", "1") == "0":
        return None
    name = source.stem
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        warn_once("no-compiler", "No C++ compiler found (set CXX); using the slower PyTorch CPU code.")
        return None
    target = kernel_cache_dir() / f"{name}-{_cache_key(compiler, source)}.so"
    if not target.exists():
        error = _compile(compiler, source, target)
        if error is not None:
            warn_once(
                f"compile-{name}", f"Compiling the {name} CPU kernel failed ({error}); using PyTorch code."
            )
            return None
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        warn_once(f"load-{name}", f"Loading the {name} CPU kernel failed ({exc}); using PyTorch code.")
        return None


class CpuKernel:
    """The library of ``csrc/<name>.cpp`` with the ctypes argument types of its exported functions.

    signatures: exported function name -> list of ctypes argument types (set once, on first load).
    """

    def __init__(self, name: str, signatures: dict[str, list[Any]]) -> None:
        self.source = CSRC / f"{name}.cpp"
        self.signatures = signatures
        self._typed: ctypes.CDLL | None = None

    def library(self) -> ctypes.CDLL | None:
        """The loaded library with its signatures set, or None when it cannot be built or loaded."""
        lib = load_cpu_kernel(self.source)
        if lib is not None and lib is not self._typed:
            for function, argtypes in self.signatures.items():
                getattr(lib, function).argtypes = argtypes
            self._typed = lib
        return lib

    def available(self) -> bool:
        """Whether the kernel can be used in this environment."""
        return self.library() is not None

    def function(self, name: str) -> Any:
        """The exported function ``name`` (the caller has checked :meth:`available`)."""
        lib = self.library()
        assert lib is not None, f"the {self.source.stem} kernel is unavailable"
        return getattr(lib, name)


def ptr(x: Tensor | None) -> int | None:
    """Data pointer of ``x`` for ctypes (None for a missing tensor)."""
    return None if x is None else x.data_ptr()
