"""Initialisation schemes: run.py's official re-init, Mamba-preserving, constructor default."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from stm3_lightning.models.stm3.init import official_init
from stm3_lightning.models.stm3.mamba import MultiscaleMamba


def _mambas(model: torch.nn.Module) -> list[MultiscaleMamba]:
    return [m for m in model.modules() if isinstance(m, MultiscaleMamba)]


def test_official_is_xavier_and_unit_uniform(build: Callable) -> None:
    model = build(init="official")
    for name, p in model.named_parameters():
        if p.dim() > 1:
            fan_in = p.shape[1] * p[0, 0].numel()
            fan_out = p.shape[0] * p[0, 0].numel()
            assert p.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-6, name
        else:
            assert p.min() >= 0 and p.max() < 1, name
    # LayerNorm_[D, Q] parameters are 2-D, so run.py's loop gives them xavier values (not U(0, 1)).
    assert model.layers[0].spatial.norm1.weight.min() < 0
    a_log = _mambas(model)[0].A_log
    assert not torch.allclose(a_log, torch.log(torch.arange(1.0, a_log.shape[1] + 1)).expand_as(a_log))


def test_official_consumes_the_random_stream_in_parameter_order(build: Callable) -> None:
    model = build()
    expected = [torch.empty_like(p) for p in model.parameters()]
    torch.manual_seed(3)
    for p in expected:
        if p.dim() > 1:
            torch.nn.init.xavier_uniform_(p)
        else:
            torch.nn.init.uniform_(p)
    torch.manual_seed(3)
    official_init(model)
    for p, ref in zip(model.parameters(), expected, strict=True):
        assert torch.equal(p, ref)


def test_mamba_keeps_the_ssm_init(build: Callable) -> None:
    model = build(init="mamba")
    for m in _mambas(model):
        torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, m.d_state + 1)).expand_as(m.A_log))
        assert torch.all(m.D == 1) and torch.all(m.dt_embedding == 0)
        assert F.softplus(m.dt_proj.bias).max() <= 0.1 + 1e-6
    bias = model.layers[0].spatial.attention.q_proj.bias
    assert bias.min() >= 0 and bias.max() < 1 and not torch.all(bias == 0)  # the rest is still re-initialised


def test_default_is_the_release_constructor_init(build: Callable) -> None:
    model = build(init="default")
    spatial = model.layers[0].spatial
    assert torch.all(spatial.norm1.weight == 1) and torch.all(spatial.graph.bias_pool == 0)
    assert torch.all(spatial.attention.q_proj.bias == 0)
    m = _mambas(model)[0]
    assert torch.all(m.D == 1) and m.dt_embedding.std() > 0.1  # randn offset, as released
