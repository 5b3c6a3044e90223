"""Selective scan (the Mamba S6 recurrence) with interchangeable backends.

Semantics are those of ``mamba_ssm``'s ``selective_scan_fn``: ``delta = softplus(delta + delta_bias)``,
``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t``, ``y_t = C_t . h_t + D * u_t``, ``y *= silu(z)``.

Backends:

- ``ref``: a plain sequential loop indexing every time step, like ``mamba_ssm``'s ``selective_scan_ref`` (oracle).
- ``torch``: the fast default. On CPU with float32/bfloat16/float16 inputs it runs a fused C++ kernel (compiled on
  first use with the system C++ compiler and cached on disk, vectorised over channels, batch split over
  ``torch.get_num_threads()`` threads, hand-written reverse-scan backward with recomputation, so nothing of size
  ``[b, d, L, n]`` is ever stored). Without a compiler, on GPU or in float64 it runs a PyTorch loop over inputs
  unbound along time once.
- ``cuda``: ``mamba_ssm``'s CUDA kernel, imported lazily; falls back to ``torch`` with a warning.

Layout tip: inputs that are ``[b, d, L]`` views of time-major ``[b, L, d]`` storage (``x.transpose(1, 2)``, as
produced by ``Linear`` layers) are read in place by the CPU kernel; other layouts cost one copy.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

log = logging.getLogger(__name__)

SCAN_BACKENDS = ("auto", "torch", "ref", "cuda")

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Emit ``message`` as a ``UserWarning`` the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


# --------------------------------------------------------------------------------------------- backend choice


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
    log.info("scan backend %r on %s resolved to %r", name, device_type, choice)


def resolve_backend(name: str, device: torch.device) -> str:
    """Map a backend name to the backend used for tensors on ``device``.

    ``auto`` becomes ``cuda`` when the tensors are on a CUDA device and ``mamba_ssm``/``causal_conv1d`` import,
    else ``torch``. The choice is logged once per (name, device type).
    """
    if name not in SCAN_BACKENDS:
        raise ValueError(f"Unknown scan backend {name!r}; choose one of {', '.join(SCAN_BACKENDS)}.")
    device = torch.device(device)
    choice = name
    if name == "auto":
        choice = "cuda" if device.type == "cuda" and cuda_ops_importable() else "torch"
    _log_choice(name, device.type, choice)
    return choice


# ------------------------------------------------------------------------------------------ reference oracle


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
) -> Tensor:
    """Plain sequential selective scan indexing every time step (the test oracle and benchmark baseline).

    Computes in float32 (float64 inputs stay float64) and returns u's dtype, like ``selective_scan_ref``.
    u, delta, z: [b, d, L]; A: [d, n]; B, C: [b, n, L]; D, delta_bias: [d]; returns y: [b, d, L].
    """
    dtype_in = u.dtype
    cdtype = torch.promote_types(dtype_in, torch.float32)
    u, delta, A, B, C = (x.to(cdtype) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = delta_a[:, :, t] * h + delta_b_u[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.to(cdtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdtype))
    return y.to(dtype_in)


# ------------------------------------------------------------------------------------------- PyTorch loop


def _scan_eager(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> Tensor:
    """Selective scan as a PyTorch loop over inputs unbound along time once (any device, any float dtype).

    u, delta, z: [b, d, L]; A: [d, n]; B, C: [b, n, L]; D, delta_bias: [d]; returns y: [b, d, L].
    """
    dtype_in = u.dtype
    cdtype = torch.promote_types(dtype_in, torch.float32)
    u, delta, A, B, C = (x.to(cdtype) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    steps = zip(delta.unbind(2), (delta * u).unbind(2), B.unbind(2), C.unbind(2), strict=True)
    for d_t, x_t, b_t, c_t in steps:
        h = torch.exp(d_t[:, :, None] * A) * h + x_t[:, :, None] * b_t[:, None, :]
        ys.append(torch.einsum("bdn,bn->bd", h, c_t))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.to(cdtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdtype))
    return y.to(dtype_in)


# --------------------------------------------------------------------------- CPU kernels: build and threads

CPU_KERNEL_PRELUDE = r"""
#include <cstdint>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
// Flush denormals to zero (FTZ | DAZ) for the lifetime of the guard: decays multiply states towards 1e-38,
// where denormal arithmetic would be ~100x slower.
struct FlushDenormals {
    unsigned int saved;
    FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }
    ~FlushDenormals() { _mm_setcsr(saved); }
};
#else
struct FlushDenormals {};
#endif
#define W 16
#define INLINE static inline __attribute__((always_inline))
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));
typedef float vfu __attribute__((vector_size(W * 4), aligned(4), may_alias));
INLINE vf ld(const float *p) { return *(const vfu *)p; }
INLINE void st(float *p, vf v) { *(vfu *)p = v; }
INLINE vf splat(float s) { return vf{} + s; }
INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }
INLINE vf vmin(vf a, vf b) { return a < b ? a : b; }
// exp(x), about 1 ulp, clamped to [exp(-87), exp(88)]. k = round(x / ln 2) is formed in the low mantissa bits of
// x / ln 2 + 1.5 * 2^23 + 127, so shifting those bits left by 23 gives the float 2^k directly.
INLINE vf vexp(vf x) {
    x = vmin(vmax(x, splat(-87.0f)), splat(88.0f));
    const vf kb = x * 1.44269504088896341f + 12583039.0f;
    const vf k = kb - 12583039.0f;
    const vf r = (x - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
    vf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    return p * (vf)((vi)kb << 23);
}
INLINE vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }
// softplus(x) = max(x, 0) + log1p(exp(-|x|)), with log1p(e) = 2 atanh(e / (2 + e)); sets *sig = sigmoid(x).
// One division: q = 1 / ((1 + e)(2 + e)) gives both 1 / (1 + e) and 1 / (2 + e).
INLINE vf vsoftplus(vf x, vf *sig) {
    const vf e = vexp(-(vf)((vi)x & 0x7fffffff)), q = 1.0f / ((1.0f + e) * (2.0f + e));
    const vf s = e * (1.0f + e) * q, s2 = s * s;
    vf p = s2 * (1.0f / 15) + 1.0f / 13;
    p = p * s2 + 1.0f / 11;
    p = p * s2 + 1.0f / 9;
    p = p * s2 + 1.0f / 7;
    p = p * s2 + 1.0f / 5;
    p = p * s2 + 1.0f / 3;
    p = p * s2 + 1.0f;
    *sig = (x >= 0.0f ? splat(1.0f) : e) * (2.0f + e) * q;
    return vmax(x, vf{}) + 2.0f * s * p;
}
"""
"""C++ shared by the CPU kernels: a W-lane float vector type and vectorised exp, sigmoid and softplus."""

_FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512"),
    ("-O3", "-march=native"),
    ("-O3",),
)


def _kernel_cache_dir() -> Path:
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


def _compile(compiler: str, source: str, target: Path) -> str | None:
    """Compile ``source`` into the shared library ``target``; returns the last error message, None on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    error = "no flag set tried"
    for flags in _FLAG_SETS:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            cmd = [compiler, *flags, "-std=c++17", "-fPIC", "-shared", "-x", "c++", "-", "-o", str(out)]
            try:
                done = subprocess.run(cmd, input=source, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as exc:
                return str(exc)
            if done.returncode == 0:
                os.replace(out, target)
                return None
            error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
    return error


@functools.cache
def load_cpu_kernel(name: str, source: str) -> ctypes.CDLL | None:
    """Compile ``CPU_KERNEL_PRELUDE + source`` once (cached on disk) and load it; None if that is impossible.

    Set ``STM3_CPU_KERNELS=0`` to disable the kernels, ``STM3_KERNEL_CACHE`` to move the cache and ``CXX`` to
    pick the compiler. A failure warns once; callers then use their PyTorch implementation.
    """
    if os.environ.get("STM3_CPU_KERNELS", "1") == "0":
        return None
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        warn_once("no-compiler", "No C++ compiler found (set CXX); using the slower PyTorch CPU scan/conv.")
        return None
    full = CPU_KERNEL_PRELUDE + source
    key = "\0".join((full, compiler, platform.machine(), _cpu_signature(), repr(_FLAG_SETS)))
    target = _kernel_cache_dir() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.so"
    if not target.exists():
        error = _compile(compiler, full, target)
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


_pool_state: dict[str, Any] = {}


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` workers, rebuilt after a fork or when the thread count changes."""
    key = (os.getpid(), threads)
    if _pool_state.get("key") != key:
        old = _pool_state.get("pool")
        if isinstance(old, ThreadPoolExecutor) and _pool_state["key"][0] == key[0]:
            old.shutdown(wait=False)
        _pool_state["key"] = key
        _pool_state["pool"] = ThreadPoolExecutor(threads, thread_name_prefix="stm3-kernel")
    pool = _pool_state["pool"]
    assert isinstance(pool, ThreadPoolExecutor)
    return pool


def batch_ranges(batch: int, work_per_item: int) -> list[tuple[int, int]]:
    """Split ``range(batch)`` into contiguous chunks for ``torch.get_num_threads()`` threads.

    Small problems stay in one chunk; large ones get four chunks per thread for load balance.
    """
    threads = torch.get_num_threads()
    if threads <= 1 or batch <= 1 or batch * work_per_item < 1 << 16:
        return [(0, batch)]
    chunks = min(batch, 4 * threads)
    return [(batch * i // chunks, batch * (i + 1) // chunks) for i in range(chunks)]


def run_ranges(fn: Callable[[int, int, int], object], ranges: list[tuple[int, int]]) -> None:
    """Call ``fn(chunk_index, start, stop)`` for every range, in parallel when there are several."""
    if len(ranges) == 1:
        fn(0, *ranges[0])
        return
    pool = _thread_pool(torch.get_num_threads())
    for future in [pool.submit(fn, i, start, stop) for i, (start, stop) in enumerate(ranges)]:
        future.result()


def ptr(x: Tensor | None) -> int | None:
    """Data pointer of ``x`` for ctypes (None for a missing tensor)."""
    return None if x is None else x.data_ptr()


# ------------------------------------------------------------------------------------- CPU selective scan

_SCAN_SOURCE = r"""
// Fused selective scan (softplus, D skip, silu(z) gate) for CPU, vectorised over W channels.
template <int I0, int I1, int I2, int I3, int I4, int I5, int I6, int I7, int I8, int I9, int I10, int I11,
          int I12, int I13, int I14, int I15>
INLINE vf shuf(vf a, vf b) {
    return __builtin_shuffle(a, b, vi{I0, I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13, I14, I15});
}

// out[n] += sum of the lanes of p[n] for n = 0..15 (transpose-and-add tree).
INLINE void hsum16_add(const vf *p, float *out) {
    vf v1[8], v2[4], v3[2];
    for (int i = 0; i < 8; ++i)
        v1[i] = shuf<0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23>(p[2 * i], p[2 * i + 1]) +
                shuf<8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31>(p[2 * i], p[2 * i + 1]);
    for (int i = 0; i < 4; ++i)
        v2[i] = shuf<0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27>(v1[2 * i], v1[2 * i + 1]) +
                shuf<4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31>(v1[2 * i], v1[2 * i + 1]);
    for (int i = 0; i < 2; ++i)
        v3[i] = shuf<0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29>(v2[2 * i], v2[2 * i + 1]) +
                shuf<2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31>(v2[2 * i], v2[2 * i + 1]);
    st(out, ld(out) + shuf<0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30>(v3[0], v3[1]) +
                shuf<1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31>(v3[0], v3[1]));
}

INLINE float hsum(vf v) {
    float s = 0.f;
    for (int i = 0; i < W; ++i) s += v[i];
    return s;
}

// All [b, L, X] tensors have unit stride along X and (sb, st) strides in elements; D is a multiple of W.
struct View { const float *p; int64_t sb, st; };
struct ScanArgs {
    View u, delta, z, B, C, dy;          // z.p may be null; dy is used by the backward only
    const float *A, *Dskip, *bias;       // A: [N, D] (transposed); Dskip, bias: [D] or null
    float *y, *du, *ddelta, *dz, *dB, *dC;  // contiguous [b, L, D] / [b, L, N] outputs
    int64_t D, N, L;
    int softplus;
};
// Per-channel-block inputs of one time step.
struct Step { vf dt, u, x, sig, zs, zg; };

INLINE const float *at(View v, int64_t b, int64_t t) { return v.p + b * v.sb + t * v.st; }

// Loads step t of channels [d0, d0 + W): dt = softplus(delta + bias), x = dt * u, z gate silu(z) and its slope.
INLINE Step load_step(const ScanArgs &a, int64_t b, int64_t t, int64_t d0) {
    Step s{};
    vf dr = ld(at(a.delta, b, t) + d0);
    if (a.bias) dr += ld(a.bias + d0);
    if (a.softplus) s.dt = vsoftplus(dr, &s.sig);
    else { s.dt = dr; s.sig = splat(1.0f); }
    s.u = ld(at(a.u, b, t) + d0);
    s.x = s.dt * s.u;
    if (a.z.p) {
        const vf z = ld(at(a.z, b, t) + d0), sz = vsigmoid(z);
        s.zs = z * sz;
        s.zg = sz * (1.0f + z * (1.0f - sz));
    }
    return s;
}

// Work buffers of one (batch element, channel block): steps S ([L]), and for the backward states H and decays E
// ([L, N] vf) and pre-gate outputs YP ([L]).
struct Record { vf *H, *E, *YP; Step *S; };

// Forward recurrence over channels [d0, d0 + W) of batch element b: writes y, or with RECORD fills rec instead.
// The steps are computed first, in a loop without dependencies: inside the recurrence their exp/division latency
// would stall it.
template <int NC, bool RECORD>
INLINE void fwd_block(const ScanArgs &a, int64_t b, int64_t d0, Record rec, vf *work) {
    const int64_t N = NC > 0 ? NC : a.N, D = a.D, L = a.L;
    for (int64_t t = 0; t < L; ++t) rec.S[t] = load_step(a, b, t, d0);
    vf hl[NC > 0 ? NC : 1];
    vf *h = NC > 0 ? hl : work;
    for (int64_t n = 0; n < N; ++n) h[n] = vf{};
    const vf dsk = a.Dskip ? ld(a.Dskip + d0) : vf{};
    const float *Bb = at(a.B, b, 0), *Cb = at(a.C, b, 0);
    for (int64_t t = 0; t < L; ++t) {
        const Step &s = rec.S[t];
        const float *bt = Bb + t * a.B.st, *ct = Cb + t * a.C.st;
        vf acc = dsk * s.u;
        for (int64_t n = 0; n < N; ++n) {
            const vf e = vexp(s.dt * ld(a.A + n * D + d0));
            h[n] = e * h[n] + s.x * bt[n];
            acc += h[n] * ct[n];
            if (RECORD) { rec.H[t * N + n] = h[n]; rec.E[t * N + n] = e; }
        }
        if (RECORD) rec.YP[t] = acc;
        else st(a.y + (b * L + t) * D + d0, a.z.p ? acc * s.zs : acc);
    }
}

// Reverse recurrence over channels [d0, d0 + W) of batch element b: writes du, ddelta, dz; adds into the rows of
// dB, dC (zeroed by the caller) and the accumulators dA ([N, D]), dD, dbias ([D]).
template <int NC>
INLINE void bwd_block(const ScanArgs &a, int64_t b, int64_t d0, Record rec, float *dA, float *dD, float *dbias,
                      vf *work) {
    const int64_t N = NC > 0 ? NC : a.N, D = a.D, L = a.L;
    vf gl[NC > 0 ? NC : 1], gal[NC > 0 ? NC : 1], pbl[NC > 0 ? NC : 1], pcl[NC > 0 ? NC : 1];
    vf *g = NC > 0 ? gl : work, *ga = NC > 0 ? gal : work + N;
    vf *pb = NC > 0 ? pbl : work + 2 * N, *pc = NC > 0 ? pcl : work + 3 * N, *zero = work + 4 * N;
    for (int64_t n = 0; n < N; ++n) { g[n] = vf{}; ga[n] = vf{}; zero[n] = vf{}; }
    const vf dsk = a.Dskip ? ld(a.Dskip + d0) : vf{};
    vf gD = vf{}, gbias = vf{};
    const float *Bb = at(a.B, b, 0), *Cb = at(a.C, b, 0);
    for (int64_t t = L - 1; t >= 0; --t) {
        const Step s = rec.S[t];
        const float *bt = Bb + t * a.B.st, *ct = Cb + t * a.C.st;
        const vf *Ht = rec.H + t * N, *Et = rec.E + t * N, *Hp = t > 0 ? Ht - N : zero;
        vf gy = ld(at(a.dy, b, t) + d0);
        const int64_t o = (b * L + t) * D + d0;
        if (a.z.p) {
            st(a.dz + o, gy * rec.YP[t] * s.zg);
            gy *= s.zs;
        }
        vf dx = vf{}, dd = vf{};
        for (int64_t n = 0; n < N; ++n) {
            const vf gn = g[n] + gy * ct[n], e = Et[n], sv = gn * e * Hp[n];
            pc[n] = gy * Ht[n];
            pb[n] = gn * s.x;
            dx += gn * bt[n];
            dd += sv * ld(a.A + n * D + d0);
            ga[n] += sv * s.dt;
            g[n] = gn * e;
        }
        float *dbt = a.dB + (b * L + t) * N, *dct = a.dC + (b * L + t) * N;
        if (NC == 16) {
            hsum16_add(pb, dbt);
            hsum16_add(pc, dct);
        } else {
            for (int64_t n = 0; n < N; ++n) { dbt[n] += hsum(pb[n]); dct[n] += hsum(pc[n]); }
        }
        gD += gy * s.u;
        st(a.du + o, dx * s.dt + gy * dsk);
        const vf gdelta = (dd + dx * s.u) * s.sig;
        st(a.ddelta + o, gdelta);
        gbias += gdelta;
    }
    for (int64_t n = 0; n < N; ++n) st(dA + n * D + d0, ld(dA + n * D + d0) + ga[n]);
    st(dD + d0, ld(dD + d0) + gD);
    st(dbias + d0, ld(dbias + d0) + gbias);
}

template <int NC>
static void fwd_range(const ScanArgs &a, int64_t b0, int64_t b1) {
    vf *work = (vf *)aligned_alloc(64, sizeof(vf) * (a.N + 1));
    Record rec{};
    rec.S = (Step *)aligned_alloc(64, sizeof(Step) * (a.L + 1));
    for (int64_t b = b0; b < b1; ++b)
        for (int64_t d0 = 0; d0 < a.D; d0 += W) fwd_block<NC, false>(a, b, d0, rec, work);
    free(rec.S); free(work);
}

template <int NC>
static void bwd_range(const ScanArgs &a, int64_t b0, int64_t b1, float *dA, float *dD, float *dbias) {
    const int64_t N = a.N, L = a.L;
    Record rec;
    rec.H = (vf *)aligned_alloc(64, sizeof(vf) * (N * L + 1));
    rec.E = (vf *)aligned_alloc(64, sizeof(vf) * (N * L + 1));
    rec.YP = (vf *)aligned_alloc(64, sizeof(vf) * (L + 1));
    rec.S = (Step *)aligned_alloc(64, sizeof(Step) * (L + 1));
    vf *work = (vf *)aligned_alloc(64, sizeof(vf) * (5 * N + 1));
    for (int64_t b = b0; b < b1; ++b) {
        memset(a.dB + b * L * N, 0, sizeof(float) * L * N);
        memset(a.dC + b * L * N, 0, sizeof(float) * L * N);
        for (int64_t d0 = 0; d0 < a.D; d0 += W) {
            fwd_block<NC, true>(a, b, d0, rec, work);
            bwd_block<NC>(a, b, d0, rec, dA, dD, dbias, work);
        }
    }
    free(rec.H); free(rec.E); free(rec.YP); free(rec.S); free(work);
}

extern "C" {
void stm3_scan_fwd(const ScanArgs *a, int64_t b0, int64_t b1) {
    FlushDenormals guard;
    if (a->N == 16) fwd_range<16>(*a, b0, b1);
    else fwd_range<0>(*a, b0, b1);
}
// dA: [N, D], dD, dbias: [D]; accumulated into (one set per concurrent call).
void stm3_scan_bwd(const ScanArgs *a, int64_t b0, int64_t b1, float *dA, float *dD, float *dbias) {
    FlushDenormals guard;
    if (a->N == 16) bwd_range<16>(*a, b0, b1, dA, dD, dbias);
    else bwd_range<0>(*a, b0, b1, dA, dD, dbias);
}
}
"""


class _View(ctypes.Structure):
    _fields_ = [("p", ctypes.c_void_p), ("sb", ctypes.c_int64), ("st", ctypes.c_int64)]


class _ScanArgs(ctypes.Structure):
    _fields_ = [
        *((name, _View) for name in ("u", "delta", "z", "B", "C", "dy")),
        *((name, ctypes.c_void_p) for name in ("A", "Dskip", "bias", "y", "du", "ddelta", "dz", "dB", "dC")),
        *((name, ctypes.c_int64) for name in ("D", "N", "L")),
        ("softplus", ctypes.c_int),
    ]


_LANES = 16


def _scan_kernel() -> ctypes.CDLL | None:
    lib = load_cpu_kernel("selective_scan", _SCAN_SOURCE)
    if lib is not None and not hasattr(lib, "_stm3_typed"):
        lib.stm3_scan_fwd.argtypes = [ctypes.POINTER(_ScanArgs), ctypes.c_int64, ctypes.c_int64]
        lib.stm3_scan_bwd.argtypes = [
            ctypes.POINTER(_ScanArgs),
            *[ctypes.c_int64] * 2,
            *[ctypes.c_void_p] * 3,
        ]
        lib._stm3_typed = True
    return lib


def cpu_scan_kernel_available() -> bool:
    """Whether the compiled CPU selective-scan kernel can be used in this environment."""
    return _scan_kernel() is not None


def time_major(x: Tensor, width: int) -> Tensor:
    """A float32 ``[b, L, width]`` tensor with unit stride in its last dim holding ``x`` (zero-padded channels).

    x: [b, c, L] with c <= width; returns [b, L, width], a view of ``x`` when its storage already fits.
    """
    t = x.transpose(1, 2).float()
    if t.shape[2] != width:
        t = F.pad(t, (0, width - t.shape[2]))
    return t if t.stride(2) == 1 else t.contiguous()


def _padded(x: Tensor | None, width: int) -> Tensor | None:
    """x: [c] or [n, c] -> float32 contiguous, zero-padded to ``width`` along the last dim."""
    return None if x is None else F.pad(x.detach().float(), (0, width - x.shape[-1])).contiguous()


def _view(x: Tensor | None) -> _View:
    return _View() if x is None else _View(x.data_ptr(), x.stride(0), x.stride(1))


class _CpuSelectiveScan(torch.autograd.Function):
    """Fused CPU selective scan; the backward recomputes the states per (batch, 16-channel block)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None,
        z: Tensor | None,
        delta_bias: Tensor | None,
        delta_softplus: bool,
    ) -> Tensor:
        batch, dim, length = u.shape
        width = -(-dim // _LANES) * _LANES
        tensors = [
            time_major(u, width),
            time_major(delta, width),
            None if z is None else time_major(z, width),
        ]
        tensors += [time_major(B, B.shape[1]), time_major(C, C.shape[1])]
        params = [_padded(A.t(), width), _padded(D, width), _padded(delta_bias, width)]
        y = torch.empty(batch, length, width)
        args = _scan_args(tensors, params, softplus=delta_softplus)
        args.y = y.data_ptr()
        lib = _scan_kernel()
        assert lib is not None
        ranges = batch_ranges(batch, length * width * A.shape[1])
        run_ranges(lambda _i, b0, b1: lib.stm3_scan_fwd(ctypes.byref(args), b0, b1), ranges)
        ctx.save_for_backward(*(t for t in tensors if t is not None), *(p for p in params if p is not None))
        ctx.layout = (dim, width, z is not None, D is not None, delta_bias is not None, delta_softplus)
        ctx.dtypes = tuple(None if x is None else x.dtype for x in (u, delta, A, B, C, D, z, delta_bias))
        return y[..., :dim].transpose(1, 2).to(u.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        dim, width, has_z, has_d, has_bias, softplus = ctx.layout
        saved = iter(ctx.saved_tensors)
        u, delta = next(saved), next(saved)
        z = next(saved) if has_z else None
        B, C, A_t = next(saved), next(saved), next(saved)
        params = [A_t, next(saved) if has_d else None, next(saved) if has_bias else None]
        batch, length, n = B.shape
        args = _scan_args([u, delta, z, B, C], params, softplus=softplus)
        grad_t = time_major(grad, width)  # keep a reference: the kernel reads its memory
        args.dy = _view(grad_t)
        du, ddelta = torch.empty(batch, length, width), torch.empty(batch, length, width)
        dz = torch.empty(batch, length, width) if has_z else None
        dB, dC = torch.empty(batch, length, n), torch.empty(batch, length, n)
        for name, out in (("du", du), ("ddelta", ddelta), ("dz", dz), ("dB", dB), ("dC", dC)):
            setattr(args, name, ptr(out))
        ranges = batch_ranges(batch, length * width * n)
        acc = torch.zeros(len(ranges), n + 2, width)
        lib = _scan_kernel()
        assert lib is not None

        def work(i: int, b0: int, b1: int) -> None:
            lib.stm3_scan_bwd(
                ctypes.byref(args), b0, b1, acc[i, :n].data_ptr(), ptr(acc[i, n]), ptr(acc[i, n + 1])
            )

        run_ranges(work, ranges)
        acc = acc.sum(0)[:, :dim]
        channel = [x[..., :dim].transpose(1, 2) for x in (du, ddelta)]
        grads = [*channel, acc[:n].t(), dB.transpose(1, 2), dC.transpose(1, 2)]
        grads += [acc[n] if has_d else None, None if dz is None else dz[..., :dim].transpose(1, 2)]
        grads += [acc[n + 1] if has_bias else None]
        out = [None if g is None else g.to(dt) for g, dt in zip(grads, ctx.dtypes, strict=True)]
        return (*out, None)


def _scan_args(tensors: list[Tensor | None], params: list[Tensor | None], softplus: bool) -> _ScanArgs:
    """Kernel arguments from time-major (u, delta, z, B, C) and padded (A^T, D, delta_bias)."""
    u, delta, z, B, C = tensors
    args = _ScanArgs(u=_view(u), delta=_view(delta), z=_view(z), B=_view(B), C=_view(C))
    args.A, args.Dskip, args.bias = (ptr(p) for p in params)
    args.D, args.N, args.L = u.shape[2], B.shape[2], u.shape[1]
    args.softplus = int(softplus)
    return args


# ------------------------------------------------------------------------------------------------ dispatch


def _cuda_selective_scan() -> Callable[..., Tensor] | None:
    """``mamba_ssm``'s ``selective_scan_fn``, or None (with a one-time warning) when it cannot be imported."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # noqa: BLE001 - any import failure means "use the PyTorch backend"
        warn_once(
            "cuda-scan", f"mamba_ssm's CUDA selective scan is unavailable ({exc}); using the torch backend."
        )
        return None
    return selective_scan_fn


def _use_cpu_kernel(u: Tensor) -> bool:
    return u.device.type == "cpu" and u.dtype in _KERNEL_DTYPES and _scan_kernel() is not None


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    backend: str = "auto",
) -> Tensor:
    """Selective scan ``y = SSM(A, B, C, delta)(u) + D * u``, gated by ``silu(z)`` (``selective_scan_fn``).

    u, delta, z: [b, d, L]; A: [d, n]; B, C: [b, n, L]; D, delta_bias: [d]; returns y: [b, d, L] in u's dtype.
    """
    if u.dim() != 3 or B.dim() != 3 or A.dim() != 2:
        raise ValueError(
            f"selective_scan expects u: [b, d, L], A: [d, n], B, C: [b, n, L]; got u {tuple(u.shape)}, "
            f"A {tuple(A.shape)}, B {tuple(B.shape)} (grouped or time-invariant B/C are not supported)."
        )
    name = resolve_backend(backend, u.device)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if name == "ref":
        return selective_scan_ref(*args)
    if name == "cuda":
        fn = _cuda_selective_scan() if u.device.type == "cuda" else None
        if u.device.type != "cuda":
            warn_once("cuda-scan-device", "Scan backend 'cuda' needs CUDA tensors; using the torch backend.")
        if fn is not None:
            return fn(*args)
    if _use_cpu_kernel(u):
        return _CpuSelectiveScan.apply(*args)
    return _scan_eager(*args)
