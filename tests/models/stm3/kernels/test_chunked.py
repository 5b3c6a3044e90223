"""The chunked selective scan and causal conv agree with the PyTorch references (fp32, CPU), keep the recurrence in
fp32 under bf16 autocast, and give the same bits twice."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from stm3_lightning.models.stm3.kernels.chunked import (
    causal_conv1d_chunked,
    causal_conv1d_ref,
    default_chunk_size,
    selective_scan_chunked,
    selective_scan_ref,
)

OUT_TOL, GRAD_TOL = 1e-5, 1e-4
OPTIONAL = ("D", "z", "delta_bias")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is faster on a busy machine and fixes the reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(
    b: int,
    d: int,
    n: int,
    length: int,
    seed: int = 0,
    a_scale: float = 2.0,
    time_major: bool = False,
    positive_delta: bool = False,
) -> dict[str, torch.Tensor]:
    """u, delta, z: [b, d, L]; A: [d, n]; B, C: [b, n, L]; D, delta_bias: [d] (seeded, requiring grad).

    a_scale: A = -(U(0, 1) * a_scale + 0.1). time_major: [b, c, L] views of [b, L, c] storage (as Linear layers
    produce them). positive_delta: delta > 0 (for runs without softplus).
    """
    g = torch.Generator().manual_seed(seed)

    def seq(c: int) -> torch.Tensor:
        if time_major:
            return torch.randn(b, length, c, generator=g).transpose(1, 2)
        return torch.randn(b, c, length, generator=g)

    delta = seq(d) * 0.5
    x = {
        "u": seq(d),
        "delta": delta.abs() if positive_delta else delta,
        "A": -(torch.rand(d, n, generator=g) * a_scale + 0.1),
        "B": seq(n).tanh(),
        "C": seq(n).tanh(),
        "D": torch.rand(d, generator=g),
        "z": seq(d),
        "delta_bias": torch.rand(d, generator=g) - 0.5,
    }
    return {k: v.requires_grad_(True) for k, v in x.items()}


def values_and_grads(fn: Callable[..., torch.Tensor], x: dict[str, torch.Tensor], **kw: object) -> dict:
    """{"y": output, name: gradient of <y, fixed random cotangent> w.r.t. each input}.

    The cotangent's values are bf16-representable, so fp32 and bf16 runs get the same one."""
    y = fn(**x, **kw)
    cotangent = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).bfloat16().to(y.dtype)
    grads = torch.autograd.grad(y, list(x.values()), cotangent)
    return {"y": y, **dict(zip(x, grads, strict=True))}


def assert_matches_ref(x: dict[str, torch.Tensor], **kw: object) -> None:
    """Output within 1e-5 of max(1, |y_ref|); each gradient within 1e-4 of its largest reference entry (of the
    largest gradient of all inputs where the reference gradient is zero by construction, e.g. dA at L = 1)."""
    softplus = kw.pop("delta_softplus", True)
    expected = values_and_grads(selective_scan_ref, x, delta_softplus=softplus)
    actual = values_and_grads(selective_scan_chunked, x, delta_softplus=softplus, **kw)
    largest = max(g.abs().max().item() for name, g in expected.items() if name != "y")
    for name, want in expected.items():
        scale = want.abs().max().item() or largest
        tol = OUT_TOL * max(1.0, scale) if name == "y" else GRAD_TOL * scale
        err = (actual[name].double() - want.double()).abs().max().item()
        assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize(
    ("b", "d", "n", "length", "chunk"),
    [
        (2, 5, 16, 37, 8),  # L not a multiple of the chunk
        (2, 4, 16, 5, 16),  # L shorter than one chunk
        (3, 6, 5, 29, None),  # odd n, default chunk
        (2, 3, 16, 96, None),  # STM3's window
        (1, 3, 7, 720, None),  # long L
        (2, 3, 4, 13, 1),  # one step per chunk: the chunk pass does everything
        (2, 3, 4, 1, None),  # a single step
    ],
)
def test_matches_reference_over_shapes(b: int, d: int, n: int, length: int, chunk: int | None) -> None:
    assert_matches_ref(make_inputs(b, d, n, length), chunk_size=chunk)


@pytest.mark.parametrize("drop", [(), ("D",), ("z",), ("delta_bias",), OPTIONAL])
def test_matches_reference_without_optional_inputs(drop: tuple[str, ...]) -> None:
    x = {k: v for k, v in make_inputs(2, 4, 16, 23).items() if k not in drop}
    assert_matches_ref(x, chunk_size=6)


def test_matches_reference_without_softplus() -> None:
    assert_matches_ref(make_inputs(2, 4, 16, 31, positive_delta=True), chunk_size=5, delta_softplus=False)


def test_matches_reference_with_large_negative_A() -> None:
    """Decays down to exp(-300) per step: products underflow to zero, nothing overflows."""
    x = make_inputs(2, 4, 16, 50, a_scale=150.0)
    assert_matches_ref(x, chunk_size=8)
    y = selective_scan_chunked(**x, chunk_size=50)
    y.sum().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(v.grad).all() for v in x.values())


def test_matches_reference_on_time_major_views_and_small_blocks() -> None:
    """Inputs laid out as the Mamba expert produces them, split into several batch blocks."""
    x = make_inputs(5, 4, 16, 40, time_major=True)
    assert not x["u"].is_contiguous()
    assert_matches_ref(x, chunk_size=7, block_elements=2 * 4 * 16 * 42)


def test_blocks_do_not_change_the_result() -> None:
    x = make_inputs(6, 4, 8, 30)
    whole = values_and_grads(selective_scan_chunked, x)
    blocked = values_and_grads(selective_scan_chunked, x, block_elements=1)  # one batch row per block
    for name, want in whole.items():  # only dA's summation order over the blocks differs
        err = (blocked[name] - want).abs().max().item()
        assert err <= 1e-6 * want.abs().max().item(), f"{name}: {err:.3g}"


def test_bf16_autocast_keeps_the_recurrence_in_fp32() -> None:
    """Under CPU bf16 autocast, bf16 activations give exactly the fp32 computation on the same values, rounded to
    bf16 at the end (outputs and gradients): no operation inside runs in bf16."""
    x = make_inputs(2, 4, 16, 64)
    activations = ("u", "delta", "z", "B", "C")  # what bf16 Linear layers produce; A, D, delta_bias stay fp32
    low = {
        k: (v.detach().bfloat16() if k in activations else v.detach()).requires_grad_(True)
        for k, v in x.items()
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = values_and_grads(selective_scan_chunked, low)
    exact = values_and_grads(
        selective_scan_chunked, {k: v.detach().float().requires_grad_(True) for k, v in low.items()}
    )
    assert actual["y"].dtype == torch.bfloat16
    for name, want in exact.items():
        expected = want.to(actual[name].dtype)
        assert torch.equal(actual[name], expected), f"{name} differs from the fp32 computation"
    ref = selective_scan_ref(**{k: v.detach().float() for k, v in low.items()})
    torch.testing.assert_close(actual["y"].float(), ref, rtol=2**-7, atol=1e-3)


def test_same_bits_twice() -> None:
    first = values_and_grads(selective_scan_chunked, make_inputs(3, 5, 16, 45), chunk_size=6)
    second = values_and_grads(selective_scan_chunked, make_inputs(3, 5, 16, 45), chunk_size=6)
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


def test_float64_stays_float64() -> None:
    x = {k: v.detach().double().requires_grad_(True) for k, v in make_inputs(2, 3, 4, 20).items()}
    y = selective_scan_chunked(**x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, selective_scan_ref(**x), rtol=1e-12, atol=1e-12)


def test_default_chunk_size_is_ceil_sqrt() -> None:
    assert [default_chunk_size(n) for n in (1, 2, 4, 5, 96, 100, 720)] == [1, 2, 2, 3, 10, 10, 27]


def test_bad_chunk_size_is_one_sentence() -> None:
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got 0"):
        selective_scan_chunked(**make_inputs(1, 2, 2, 4), chunk_size=0)


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_conv_matches_reference(activation: str | None, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(3)
    leaves = [torch.randn(2, 6, 19, generator=g), torch.randn(6, 4, generator=g), torch.randn(6, generator=g)]
    leaves = [t.requires_grad_(True) for t in (leaves if with_bias else leaves[:2])]
    cotangent = torch.randn(2, 6, 19, generator=g)
    results = []
    for fn in (causal_conv1d_ref, causal_conv1d_chunked):
        y = fn(*leaves, activation=activation) if with_bias else fn(*leaves, None, activation)
        results.append([y, *torch.autograd.grad(y, leaves, cotangent)])
    for actual, expected in zip(*reversed(results), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_causal_conv_rejects_unknown_activation() -> None:
    with pytest.raises(ValueError, match="Unknown activation 'relu'"):
        causal_conv1d_chunked(torch.zeros(1, 2, 3), torch.zeros(2, 2), activation="relu")
