"""The STM3/STM2 network: sizes, shapes, aux losses, gradients, determinism, variants and diagnostics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from stm3_lightning.models.registry import available_models, build_model
from stm3_lightning.models.stm3.config import STM3Config
from stm3_lightning.models.stm3.network import STM3Network
from stm3_lightning.types import DataInfo

REPO = Path(__file__).resolve().parents[3]
WIDE_INFO = DataInfo(num_nodes=16, input_len=8, horizon=3)  # enough nodes for every expert to be routed some


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_pemsd8_parameter_count_is_the_releases() -> None:
    model = STM3Network(STM3Config(), DataInfo(num_nodes=170, input_len=96, horizon=96))
    assert _count(model) == 196_008
    layer = model.layers[0]
    assert (_count(layer.moe), _count(layer.spatial), _count(model.head)) == (22_300, 768, 147_552)


def test_etth1_component_counts() -> None:
    cfg = STM3Config(num_layers=1, hidden_dim=12, node_emb_dim=8)
    model = STM3Network(cfg, DataInfo(num_nodes=7, input_len=96, horizon=96))
    layer = model.layers[0]
    assert (_count(layer.moe), _count(layer.spatial), _count(model.head)) == (145_480, 4_368, 442_464)
    assert _count(model) == 594_744


@pytest.mark.parametrize("model_name", ["stm3", "stm2"])
def test_forward_shapes_and_aux(build: Callable, batch: torch.Tensor, model_name: str) -> None:
    model = build(model_name)
    pred, aux = model(batch)
    assert pred.shape == (2, 3, 6, 1)
    expected = {"contrastive/layer0", "contrastive/layer1"} if model_name == "stm3" else set()
    assert set(aux) == expected and all(v.dim() == 0 for v in aux.values())
    model.eval()
    assert model(batch)[1] == {}


@pytest.mark.parametrize("overrides", [{"contrastive": "off"}, {"contrast_loss_weight": 0.0}])
def test_no_aux_when_contrastive_is_off(build: Callable, batch: torch.Tensor, overrides: dict) -> None:
    assert build(**overrides)(batch)[1] == {}


def test_aux_is_lambda_times_the_loss(build: Callable, batch: torch.Tensor) -> None:
    values = []
    for lam in (0.1, 0.3):
        model = build(contrast_loss_weight=lam)
        torch.manual_seed(7)
        values.append(model(batch)[1]["contrastive/layer1"])
    torch.testing.assert_close(values[1], 3 * values[0])


def test_every_parameter_gets_a_gradient() -> None:
    # The release freezes nothing outright, but: (1) the router gate only gets a ~1e-8-scaled gradient, because the
    # top-1 weight p / (p + 1e-8) is ~1 whatever p is; (2) the attention key bias gets an exactly zero gradient in
    # exact arithmetic (q . b_k is the same for every key, and softmax ignores shifts), only rounding noise;
    # (3) an expert routed no row gets no gradient: 16 nodes make every expert routed here (checked below).
    torch.manual_seed(0)
    model = STM3Network(
        STM3Config(hidden_dim=2, node_emb_dim=4, d_state=4, kernel_backend="torch"), WIDE_INFO
    )
    x = torch.randn(2, 8, 16, 1)
    diags = model.routing_diagnostics(x)
    assert all(set(d["assign"].unique().tolist()) == {0, 1, 2, 3} for d in diags)
    pred, aux = model(x)
    (F.l1_loss(pred, torch.randn_like(pred)) + sum(aux.values())).backward()
    scale = model.node_embeddings.grad.norm()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name.endswith(("router.gate.weight", "attention.k_proj.bias")):
            assert p.grad.norm() < 1e-5 * scale, name
        else:
            assert p.grad.abs().sum() > 0, name


def test_contrastive_gradient_reaches_the_experts(build: Callable, batch: torch.Tensor) -> None:
    model = build()
    _, aux = model(batch)
    aux["contrastive/layer0"].backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.layers[0].moe.experts.parameters()
    )
    assert model.head.proj.weight.grad is None


def test_deterministic_under_a_fixed_seed(build: Callable, batch: torch.Tensor) -> None:
    runs = []
    for _ in range(2):
        model = build(seed=3)
        torch.manual_seed(11)
        pred, aux = model(batch)
        (pred.square().mean() + sum(aux.values())).backward()
        runs.append((pred, aux, [p.grad for p in model.parameters()]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    for a, b in zip(runs[0][2], runs[1][2], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def test_eval_is_deterministic_without_eval_noise(build: Callable, batch: torch.Tensor) -> None:
    model = build(router_noise_at_eval=False).eval()
    first = model(batch)[0]
    torch.rand(100)
    assert torch.equal(first, model(batch)[0])


VARIANTS = [
    {},
    {"preprocess_axis": "time"},
    {"contrastive": "repaired"},
    {"contrastive": "off"},
    {"router": "hidden"},
    {"router_noise_at_eval": False},
    {"router_grad": "straight_through"},
    {"shared_expert": False},
    {"scales": [1, 3]},
    pytest.param({"scales": [1, 2]}, marks=pytest.mark.filterwarnings("ignore:Using padding='same'")),
    {"agccn": False},
    {"scale_attention": False},
    {"agccn": False, "scale_attention": False},
    {"num_experts": 2},
    {"top_k": 2},
    {"init": "mamba"},
    {"init": "default"},
    {"model": "stm2"},
    {"model": "stm2", "agccn": False, "preprocess_axis": "time"},
    {
        "preprocess_axis": "time",
        "contrastive": "repaired",
        "router": "hidden",
        "router_grad": "straight_through",
        "shared_expert": False,
        "top_k": 2,
        "scales": [1, 3, 5],
        "init": "mamba",
        "kernel_backend": "ref",
        "num_layers": 1,
    },
]


def _variant_id(overrides: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "faithful"


@pytest.mark.parametrize("overrides", VARIANTS, ids=_variant_id)
def test_variant_trains_one_step(build: Callable, batch: torch.Tensor, overrides: dict) -> None:
    model = build(**overrides)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pred, aux = model(batch)
    loss = F.l1_loss(pred, torch.randn_like(pred)) + sum(aux.values())
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_both_spatial_parts_off_drops_the_block(build: Callable) -> None:
    assert build(agccn=False, scale_attention=False).layers[0].spatial is None


def test_routing_diagnostics_contract(build: Callable, batch: torch.Tensor) -> None:
    model = build()
    diags = model.routing_diagnostics(batch, all_experts=True)
    assert len(diags) == 2 and model.training
    d = diags[0]
    b, n, e, dim, q, length = 2, 6, 4, 2, 4, 8
    shapes = {"probs": (b, n, e), "probs_noisy": (b, n, e), "assign": (b, n), "expert_repr": (b * n, dim, q)}
    assert {k: tuple(v.shape) for k, v in d.items()} == {
        **shapes,
        "expert_outputs": (e, b * n, length, dim * q),
    }
    assert d["assign"].dtype == torch.long and not any(v.requires_grad for v in d.values())
    torch.testing.assert_close(d["probs"].sum(-1), torch.ones(b, n))
    assert torch.equal(d["assign"], d["probs_noisy"].argmax(-1))
    rows = torch.arange(b * n)
    top = d["expert_outputs"][d["assign"].flatten(), rows].mean(dim=1).view(b * n, dim, q)
    torch.testing.assert_close(d["expert_repr"], F.normalize(top, dim=1), atol=1e-5, rtol=1e-4)
    assert "expert_outputs" not in model.routing_diagnostics(batch)[0]


def test_diagnostics_noise_follows_the_mode(build: Callable, batch: torch.Tensor) -> None:
    model = build(router_noise_at_eval=False).eval()
    d = model.routing_diagnostics(batch)[0]
    assert torch.equal(d["probs"], d["probs_noisy"]) and not model.training
    released = build().eval().routing_diagnostics(batch)[0]
    assert not torch.equal(released["probs"], released["probs_noisy"])


def test_stm2_has_no_routing(build: Callable, batch: torch.Tensor) -> None:
    assert build("stm2").routing_diagnostics(batch) == []


def test_registry_builds_from_the_yaml(info: DataInfo) -> None:
    assert {"stm3", "stm2"} <= set(available_models())
    cfg = OmegaConf.merge(
        OmegaConf.structured(STM3Config), OmegaConf.load(REPO / "configs" / "model" / "stm3.yaml")
    )
    cfg.hidden_dim, cfg.kernel_backend = 2, "torch"
    model = build_model(cfg, info)
    assert isinstance(model, STM3Network) and model.cfg.hidden_dim == 2


def test_rejects_inputs_of_the_wrong_shape(build: Callable) -> None:
    model = build()
    with pytest.raises(ValueError, match=r"\[B, 8, 6, C\]"):
        model(torch.randn(2, 8, 5, 1))
    with pytest.raises(ValueError, match="channel"):
        model(torch.randn(2, 8, 6, 0))
