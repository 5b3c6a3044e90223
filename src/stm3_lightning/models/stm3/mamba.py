"""Multiscale Mamba (the release's ``Mamba_multiscale``): one expert of the STM3 mixture (reference §2.3).

Differences from a plain Mamba block, all as released: the inner channels are split into Q contiguous groups, each
convolved along time with its own full ``Conv1d(kernel=scales[q], padding='same')`` before the usual causal depthwise
convolution; ``x_proj``'s output goes through ``tanh``; the step size gets a learned per-channel offset
``dt_embedding`` before ``softplus(. + dt_proj.bias)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stm3_lightning.models.stm3.kernels.causal_conv import causal_conv1d
from stm3_lightning.models.stm3.kernels.scan import selective_scan


def merged_same_kernels(convs: Iterable[nn.Conv1d]) -> tuple[Tensor, Tensor, int]:
    """Stack ``padding='same'`` convolutions of different kernel sizes into one odd-sized kernel.

    Each kernel is zero-padded so that the shared symmetric padding ``half`` reproduces its own ``'same'`` padding
    (even sizes included). Returns (weight [sum C_out, C_in, 2 half + 1], bias [sum C_out], half).
    """
    convs = list(convs)
    half = max(conv.kernel_size[0] for conv in convs) // 2
    weight = torch.cat(
        [F.pad(conv.weight, (half - (k - 1) // 2, half - k // 2)) for conv in convs for k in conv.kernel_size]
    )
    return weight, torch.cat([conv.bias for conv in convs]), half


class MultiscaleMamba(nn.Module):
    """``[b, L, M] -> [b, L, M]`` with ``d_inner = expand * M`` split into ``len(scales)`` groups.

    Parameter names and registration order are the release's, so state dicts map one to one.
    """

    def __init__(
        self,
        d_model: int,
        scales: list[int],
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        kernel_backend: str = "auto",
        recompute: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.num_scales = len(scales)
        if self.d_inner % self.num_scales:
            raise ValueError(
                f"The Mamba inner width {self.d_inner} must be divisible by the number of scales "
                f"{self.num_scales}; change model.expand or model.scales."
            )
        self.scale_dim = self.d_inner // self.num_scales
        self.kernel_backend = kernel_backend
        self.recompute = recompute
        self.dt_range = (dt_min, dt_max, dt_init_floor)
        # Direct parameters first (as nn.Module lists them), in the release's order.
        self.dt_embedding = nn.Parameter(torch.empty(self.d_inner))
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.scale_convs = nn.ModuleList(
            nn.Conv1d(self.scale_dim, self.scale_dim, kernel_size=int(k), padding="same") for k in scales
        )
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.reset_ssm_parameters()
        nn.init.normal_(self.dt_embedding)  # the release draws it from randn

    def reset_ssm_parameters(self, dt_offset: float | None = None) -> None:
        """Mamba's initialisation of ``A_log`` (log 1..n), ``D`` (1) and ``dt_proj`` (dt log-uniform in range).

        dt_offset: value for ``dt_embedding`` (None leaves it alone; ``0`` makes the initial step size Mamba's).
        """
        dt_min, dt_max, floor = self.dt_range
        std = self.dt_rank**-0.5
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = torch.exp(log_dt).clamp(min=floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            a = torch.arange(1, self.d_state + 1, dtype=torch.float32)
            self.A_log.copy_(torch.log(a).expand(self.d_inner, -1))
            self.D.fill_(1.0)
            if dt_offset is not None:
                self.dt_embedding.fill_(dt_offset)

    def multiscale(self, x: Tensor) -> Tensor:
        """x: [b, d_inner, L] -> [b, d_inner, L]; group q (contiguous channels) convolved with kernel scales[q].

        Runs as one grouped convolution (``groups = Q``) over the scales' merged kernels (see
        :func:`merged_same_kernels`): the result is the Q separate convolutions'.
        """
        weight, bias, half = merged_same_kernels(self.scale_convs)  # [d_inner, scale_dim, 2 half + 1]
        return F.conv1d(x.contiguous(), weight, bias, padding=half, groups=self.num_scales)

    def forward(self, h: Tensor) -> Tensor:
        """h: [b, L, M] -> [b, L, M]; with ``recompute`` (and gradients on) the block's activations are not kept
        but recomputed in the backward (``torch.utils.checkpoint``, non-reentrant: the same bits)."""
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(self.block, h, use_reentrant=False)
        return self.block(h)

    def block(self, h: Tensor) -> Tensor:
        """h: [b, L, M] -> [b, L, M]: in_proj, multiscale conv, causal conv, x_proj, selective scan, out_proj."""
        xz = self.in_proj(h).transpose(1, 2)  # [b, 2 d_inner, L]
        x, z = xz.chunk(2, dim=1)
        x = self.multiscale(x)
        x = causal_conv1d(
            x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu", backend=self.kernel_backend
        )
        x_dbl = torch.tanh(self.x_proj(x.transpose(1, 2)))  # [b, L, r + 2n]
        dt_raw, b_in, c_in = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt_raw @ self.dt_proj.weight.T).transpose(1, 2)  # [b, d_inner, L]
        dt = dt + self.dt_embedding[None, :, None]
        y = selective_scan(
            x,
            dt,
            -torch.exp(self.A_log.float()),
            b_in.transpose(1, 2),  # time-major views: the CPU kernel reads them in place
            c_in.transpose(1, 2),
            D=self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.kernel_backend,
        )
        return self.out_proj(y.transpose(1, 2))
