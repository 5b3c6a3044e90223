"""STM3/STM2 config schemas, their YAML files and the per-dataset reproduction files."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from stm3_lightning.models.stm3 import config
from stm3_lightning.models.stm3.config import (
    Contrastive,
    KernelBackend,
    Router,
    STM2Config,
    STM3Config,
    coerce_config,
)
from stm3_lightning.models.stm3.kernels import backends

REPO = Path(__file__).resolve().parents[3]
DATASETS = {
    # name: (layers, D, d_e, lr, lambda)  -- reference section 4
    "etth1": (1, 12, 8, 1e-4, 0.3),
    "electricity": (2, 4, 12, 3e-3, 0.1),
    "knowair": (2, 4, 12, 3e-3, 0.1),
    "metr_la": (2, 4, 12, 3e-3, 0.1),
    "milan_call": (1, 4, 12, 1e-2, 0.1),
    "milan_internet": (1, 12, 8, 1e-2, 0.3),
    "milan_sms": (2, 4, 12, 3e-3, 0.1),
    "nrel": (2, 4, 12, 3e-3, 0.1),
    "pems04": (2, 4, 12, 3e-3, 0.1),
    "pems08": (2, 4, 12, 3e-3, 0.1),
}


def _from_yaml(schema: type, text: str) -> STM2Config:
    return coerce_config(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(text)), schema)


def test_defaults_are_the_released_pemsd8_configuration() -> None:
    cfg = STM3Config()
    assert (cfg.num_layers, cfg.hidden_dim, cfg.node_emb_dim, cfg.num_experts, cfg.top_k) == (2, 4, 12, 4, 1)
    assert cfg.scales == [1, 3, 5, 7] and (cfg.d_state, cfg.d_conv, cfg.expand, cfg.cheb_k) == (16, 4, 2, 3)
    assert (cfg.contrast_loss_weight, cfg.temperature, cfg.gamma1, cfg.gamma2) == (0.1, 0.1, 0.1, 0.1)
    assert (cfg.preprocess_axis, cfg.router, cfg.contrastive, cfg.init) == (
        "node",
        "node",
        "released",
        "official",
    )
    assert cfg.router_noise_at_eval and cfg.shared_expert and cfg.agccn and cfg.scale_attention


@pytest.mark.parametrize("schema", [STM3Config, STM2Config])
def test_model_yaml_equals_schema_defaults(schema: type) -> None:
    name = schema().name
    assert _from_yaml(schema, (REPO / "configs" / "model" / f"{name}.yaml").read_text()) == schema()


def test_coerce_accepts_mappings_and_rejects_unknown_keys() -> None:
    assert coerce_config({"hidden_dim": 3, "scales": (1, 3)}, STM3Config).scales == [1, 3]
    with pytest.raises(ValueError, match="Unknown key"):
        coerce_config({"num_experts": 2}, STM2Config)


def test_contrastive_off_spellings_are_accepted() -> None:
    # YAML turns `off` into a boolean; the interface is `contrastive: off`.
    assert _from_yaml(STM3Config, "contrastive: off").contrastive == "off"
    assert _from_yaml(STM3Config, "contrastive: none\nagccn: false").contrastive == "off"
    assert _from_yaml(STM3Config, "contrastive: off").contrastive is Contrastive.off
    with pytest.raises(ValueError, match="model.router=False was read as a boolean"):
        _from_yaml(STM3Config, "router: off")


def test_choices_become_enum_members_that_read_as_strings() -> None:
    cfg = _from_yaml(STM3Config, "router: hidden\nkernel_backend: ref")
    assert cfg.router is Router.hidden and cfg.kernel_backend is KernelBackend.ref
    assert cfg.router == "hidden" and f"{cfg.router}" == str(cfg.router) == "hidden"
    # A validated config turns back into the same YAML (members are written as their values).
    assert "router: hidden" in OmegaConf.to_yaml(OmegaConf.structured(cfg))
    with pytest.raises(
        ValueError, match="Invalid model.kernel_backend='triton'; choose one of auto, torch, ref"
    ):
        coerce_config(STM3Config(kernel_backend="triton"), STM3Config)


def test_scan_backend_is_a_deprecated_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.warns(DeprecationWarning, match="model.scan_backend is deprecated; use model.kernel_backend"):
        cfg = _from_yaml(STM3Config, "scan_backend: ref")
    assert cfg.kernel_backend is KernelBackend.ref and cfg.scan_backend is None
    assert _from_yaml(STM3Config, "scan_backend: torch\nkernel_backend: torch").kernel_backend == "torch"
    with pytest.raises(ValueError, match="model.scan_backend=ref and model.kernel_backend=torch disagree"):
        _from_yaml(STM3Config, "scan_backend: ref\nkernel_backend: torch")
    assert config.STM2Config().scan_backend is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"router": "token"}, "model.router"),
        ({"preprocess_axis": "space"}, "model.preprocess_axis"),
        ({"kernel_backend": "triton"}, "model.kernel_backend"),
        pytest.param(
            {"scan_backend": "triton"},
            "model.scan_backend",
            marks=pytest.mark.filterwarnings("ignore:model.scan_backend is deprecated"),
        ),
        ({"router_grad": "st"}, "model.router_grad"),
        ({"init": "xavier"}, "model.init"),
        ({"contrastive": True}, "model.contrastive=True was read as a boolean"),
        ({"top_k": 5}, "top_k"),
        ({"scales": []}, "model.scales"),
        ({"hidden_dim": 0}, "model.hidden_dim"),
        ({"temperature": 0.0}, "model.temperature"),
    ],
)
def test_invalid_values_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        coerce_config(STM3Config(**overrides), STM3Config)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_reproduce_file_matches_the_release(dataset: str) -> None:
    cfg = OmegaConf.load(REPO / "experiments" / "reproduce" / f"{dataset}.yaml")
    assert dict(cfg.defaults) == {"data": dataset, "model": "stm3"}
    model = _from_yaml(STM3Config, OmegaConf.to_yaml(cfg.model))
    layers, d, d_e, lr, lam = DATASETS[dataset]
    assert (model.num_layers, model.hidden_dim, model.node_emb_dim, model.contrast_loss_weight) == (
        layers,
        d,
        d_e,
        lam,
    )
    assert cfg.optim.lr == pytest.approx(lr) and list(cfg.optim.milestones) == [25] and cfg.optim.gamma == 0.5
    assert cfg.data.real_value == (dataset not in ("etth1", "electricity"))
    assert cfg.data.scaler.per_node == (dataset in ("etth1", "electricity"))
