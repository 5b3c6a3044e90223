"""Name mapping to and from the official release's state dicts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from stm3_lightning.models.stm3.convert import (
    from_release_name,
    from_release_state_dict,
    to_release_name,
    to_release_state_dict,
)

MAMBA = ["dt_embedding", "A_log", "D"]
MAMBA_CHILDREN = [
    "in_proj.weight",
    "conv1d.weight",
    "conv1d.bias",
    "x_proj.weight",
    "dt_proj.weight",
    "dt_proj.bias",
]


def release_names(layers: int, experts: int, scales: int) -> list[str]:
    """The release's ``STM3.named_parameters()`` order (own parameters first, then children as registered)."""
    wb = ("weight", "bias")
    names = ["node_embeddings"]
    names += [f"multiscale_convs.{q}.{p}" for q in range(scales) for p in wb]
    names += ["feature_transform.0.weight", "feature_transform.0.bias"]
    for i in range(layers):
        dgcn = f"layers.{i}.dgcn."
        names += [dgcn + "weights_pool", dgcn + "bias_pool"]
        names += [
            f"{dgcn}{m}.{p}" for m in ("q_proj", "k_proj", "v_proj", "out_proj", "norm1", "norm2") for p in wb
        ]
        moe = f"layers.{i}.moe."
        names += [moe + "gate.weight", moe + "shared_gate.weight"]
        for expert in [f"experts.{e}." for e in range(experts)] + ["shared_expert."]:
            names += [moe + expert + n for n in MAMBA]
            names += [f"{moe}{expert}scale_convs.{q}.{p}" for q in range(scales) for p in wb]
            names += [moe + expert + n for n in MAMBA_CHILDREN + ["out_proj.weight"]]
    return names + ["time_distributed.0.weight", "time_distributed.0.bias"]


def test_names_and_order_are_the_releases(build: Callable) -> None:
    # Same order => the official re-init loop draws the same values as run.py from the same random state.
    released = to_release_state_dict(build().state_dict())
    assert list(released) == release_names(layers=2, experts=4, scales=4)


def test_round_trip_gives_identical_predictions(build: Callable, batch: torch.Tensor) -> None:
    model = build(seed=0).eval()
    released = to_release_state_dict(model.state_dict())
    restored = build(seed=1).eval()
    restored.load_state_dict(from_release_state_dict(released))
    for _ in range(2):
        torch.manual_seed(5)  # same router noise
        expected = model(batch)[0]
        torch.manual_seed(5)
        assert torch.equal(restored(batch)[0], expected)
    assert list(from_release_state_dict(released)) == list(model.state_dict())


def test_converted_weights_predict_within_1e5_of_the_reference_scan(
    build: Callable, batch: torch.Tensor
) -> None:
    """The README's claim: converted release weights predict what the release computes (``scan_backend=ref``, a
    copy of mamba-ssm's ``selective_scan_ref``) to 1e-5 with the default fused kernels, but not bit for bit."""
    released = to_release_state_dict(build(seed=0).state_dict())
    preds = []
    for backend in ("ref", "torch"):
        model = build(seed=1, scan_backend=backend).eval()
        model.load_state_dict(from_release_state_dict(released))
        torch.manual_seed(5)  # same router noise
        preds.append(model(batch)[0])
    ref, fused = preds
    assert (fused - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_data_parallel_prefix_is_stripped() -> None:
    assert from_release_name("module.layers.1.dgcn.q_proj.bias") == "layers.1.spatial.attention.q_proj.bias"
    assert to_release_name("layers.0.spatial.norm2.weight") == "layers.0.dgcn.norm2.weight"


@pytest.mark.parametrize("name", ["layers.0.mamba.A_log", "layers.0.moe.router.gate.bias", "head.weight"])
def test_names_without_a_counterpart_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="no counterpart"):
        to_release_name(name)
