"""The fused CPU scale-attention kernel agrees with the PyTorch reference, values and gradients."""

from __future__ import annotations

import pytest
import torch

from stm3_lightning.models.stm3.kernels.backends import Impl
from stm3_lightning.models.stm3.kernels.constants import ATTENTION_MAX_SIZE
from stm3_lightning.models.stm3.kernels.scale_attention import attention_impl, kernel_available
from stm3_lightning.models.stm3.scale_attention import CausalScaleAttention


def _outputs_and_grads(att: CausalScaleAttention, g: torch.Tensor, backend: str) -> list[torch.Tensor]:
    """Output, input gradient and parameter gradients of one forward/backward under ``backend``."""
    att.kernel_backend = backend
    g = g.detach().requires_grad_()
    out = att(g)
    grads = torch.autograd.grad(out, [g, *att.parameters()], torch.linspace(-1, 1, out.numel()).view_as(out))
    return [out.detach(), *grads]


@pytest.mark.parametrize(
    "dim, scales, lead", [(4, 4, (3, 5, 7)), (12, 4, (2, 9, 3)), (3, 5, (11,)), (2, 1, (4,))]
)
def test_fused_kernel_matches_the_pytorch_path(dim: int, scales: int, lead: tuple[int, ...]) -> None:
    if not kernel_available():
        pytest.skip("the fused CPU scale-attention kernel cannot be compiled here")
    torch.manual_seed(0)
    att = CausalScaleAttention(dim)
    for p in att.parameters():
        torch.nn.init.normal_(p)
    assert att.uses_kernel(torch.zeros(1, dim, scales))
    g = torch.randn(*lead, dim, scales)
    fused, plain = _outputs_and_grads(att, g, "torch"), _outputs_and_grads(att, g, "ref")
    # The key bias gets no gradient (softmax is shift invariant): both paths leave only rounding there, so the
    # absolute tolerance is relative to the largest output/gradient, as the parity checks elsewhere.
    scale = max(float(want.abs().max()) for want in plain)
    for got, want in zip(fused, plain, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5 * max(scale, 1.0), rtol=1e-5)


def test_kernel_is_skipped_where_it_does_not_apply() -> None:
    att = CausalScaleAttention(4)
    assert not att.uses_kernel(torch.zeros(2, 4, 4, dtype=torch.float64))
    assert not att.uses_kernel(torch.zeros(2, 4, ATTENTION_MAX_SIZE + 1))
    assert not CausalScaleAttention(4, kernel_backend="ref").uses_kernel(torch.zeros(2, 4, 4))
    g = torch.randn(2, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(att.double()(g), att.attention_reference(g))


def test_impl_per_backend() -> None:
    g, params = torch.zeros(2, 4, 4), [torch.zeros(4, 4, 4), torch.zeros(4, 4)]
    kernel = Impl.kernel if kernel_available() else Impl.eager
    assert attention_impl(g, params, "auto") is kernel and attention_impl(g, params, "cuda") is kernel
    assert attention_impl(g, params, "ref") is Impl.ref
