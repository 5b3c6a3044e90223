"""Kernel backends: their names (the one list), how ``auto`` resolves and which implementation an op runs.

``model.kernel_backend`` picks the implementation of every kernelled op (selective scan, causal conv, scale
attention):

- ``torch``: the fused C++ CPU kernels on CPU tensors (compiled on first use, see :mod:`.build`); elsewhere, in
  float64 or without a compiler, PyTorch code (a loop over time for the scan).
- ``ref``: plain PyTorch references (the scan indexes every time step, like ``mamba_ssm``'s
  ``selective_scan_ref``): the oracle of the parity tests.
- ``cuda``: ``mamba_ssm`` / ``causal_conv1d`` CUDA kernels on CUDA tensors; otherwise what ``auto`` would pick
  without them, with a warning.
- ``chunked``: the chunked pure-PyTorch scan of :mod:`.chunked` (and its causal conv when it has one).
- ``auto``: ``cuda`` on CUDA tensors when ``mamba_ssm`` and ``causal_conv1d`` import, ``chunked`` on other CUDA
  tensors, ``torch`` elsewhere; the choice is logged once.

A CPU kernel is only ever compiled, loaded or looked for on CPU tensors.
"""

from __future__ import annotations

import functools
import importlib
import logging
import warnings
from collections.abc import Callable
from enum import Enum
from typing import Any

import torch

from stm3_lightning.choices import Choice

log = logging.getLogger(__name__)


class KernelBackend(Choice):
    """Values of ``model.kernel_backend`` (and of the ops' ``backend`` argument)."""

    auto = "auto"
    torch = "torch"
    ref = "ref"
    cuda = "cuda"
    chunked = "chunked"


KERNEL_BACKENDS: tuple[str, ...] = tuple(member.value for member in KernelBackend)


class Impl(str, Enum):
    """What one op call runs: a CPU ``kernel``, a PyTorch ``eager`` loop, the ``ref`` code, ``cuda`` or ``chunked``.

    Compare with ``==``, not ``is``: under ``torch.compile`` the choice comes back as a traced constant.
    """

    kernel = "kernel"
    eager = "eager"
    ref = "ref"
    cuda = "cuda"
    chunked = "chunked"


_warned: set[str] = set()


def warn_once(key: str, message: str, category: type[Warning] = UserWarning) -> bool:
    """Emit ``message`` as a warning of ``category`` the first time ``key`` is seen in this process.

    Returns whether it was emitted now.
    """
    if key in _warned:
        return False
    _warned.add(key)
    warnings.warn(message, category, stacklevel=3)
    return True


@functools.cache
def cuda_ops_importable() -> bool:
    """Whether ``mamba_ssm`` and ``causal_conv1d`` (with their CUDA extensions) import in this environment."""
    try:
        import causal_conv1d  # noqa: F401
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure (missing package, missing extension, ABI) means "no"
        return False
    return True


@functools.cache
def _log_choice(name: str, device_type: str, choice: str) -> None:
    log.info("kernel backend %r on %s resolved to %r", name, device_type, choice)


def resolve_backend(name: str, device: torch.device | str) -> KernelBackend:
    """The backend that ``name`` means for tensors on ``device`` (``auto`` resolved; logged once per pair)."""
    try:
        backend = KernelBackend(name)
    except ValueError:
        raise ValueError(f"Unknown kernel backend {name!r}; choose one of {KernelBackend.names()}.") from None
    device_type = torch.device(device).type
    if backend is KernelBackend.auto:
        if device_type == "cuda":
            backend = KernelBackend.cuda if cuda_ops_importable() else KernelBackend.chunked
        else:
            backend = KernelBackend.torch
    _log_choice(str(name), device_type, backend.value)
    return backend


CHUNKED_MODULE = "stm3_lightning.models.stm3.kernels.chunked"


@functools.cache
def chunked_importable() -> bool:
    """Whether the chunked pure-PyTorch kernels (:mod:`.chunked`) import; warns once when they do not."""
    try:
        importlib.import_module(CHUNKED_MODULE)
    except ImportError as exc:
        warn_once("chunked", f"The chunked kernels cannot be imported ({exc}); using the torch backend.")
        return False
    return True


def chunked_op(name: str) -> Callable[..., Any] | None:
    """The function ``name`` of :mod:`.chunked`, or None when that module does not define it."""
    return getattr(importlib.import_module(CHUNKED_MODULE), name, None)


def cuda_op(module: str, name: str) -> Callable[..., Any] | None:
    """``module.name`` from a CUDA kernel package, or None (warning once) when it cannot be imported."""
    try:
        return getattr(importlib.import_module(module), name)
    except Exception as exc:  # noqa: BLE001 - any import failure (package, extension, ABI) means "fall back"
        warn_once(f"cuda-{name}", f"{module}.{name} is unavailable ({exc}); using the chunked backend.")
        return None


def choose_impl(
    name: str,
    device_type: str,
    cuda_ready: Callable[[], bool] | None,
    kernel_ready: Callable[[], bool],
) -> Impl:
    """The implementation one op runs for backend ``name`` on ``device_type`` tensors.

    cuda_ready: whether the op's CUDA kernel imports (None: the op has none and runs PyTorch code under ``cuda``);
    kernel_ready: whether its CPU kernel applies to these inputs and loads (called on CPU tensors only).
    ``cuda`` that cannot run falls back to ``chunked`` on CUDA tensors and ``torch`` elsewhere; ``chunked`` that
    cannot be imported falls back to ``torch``.
    """
    backend = resolve_backend(name, device_type)
    if backend is KernelBackend.cuda and cuda_ready is not None:
        if device_type == "cuda" and cuda_ready():
            return Impl.cuda
        if device_type != "cuda":
            warn_once("cuda-device", "Kernel backend 'cuda' needs CUDA tensors; using the torch backend.")
        backend = KernelBackend.chunked if device_type == "cuda" else KernelBackend.torch
    if backend is KernelBackend.ref:
        return Impl.ref
    if backend is KernelBackend.chunked and chunked_importable():
        return Impl.chunked
    return Impl.kernel if device_type == "cpu" and kernel_ready() else Impl.eager
