"""GPU checks of the chunked backend: parity with the CPU reference, fp32 recurrence under CUDA bf16 autocast, and
STM3 trained with it (model forward/backward vs the PyTorch loop, and a bf16-mixed Lightning run)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from stm3_lightning.models.registry import build_model
from stm3_lightning.models.stm3.config import STM3Config
from stm3_lightning.models.stm3.kernels.chunked import selective_scan_chunked, selective_scan_ref
from stm3_lightning.types import DataInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from tests.models.stm3.kernels.test_gpu import scan_inputs, values_and_grads  # noqa: E402  (the shared inputs)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# The model's kernel switch: ``kernel_backend`` (``scan_backend`` is its older name and alias).
BACKEND_KEY = next(
    f.name for f in dataclasses.fields(STM3Config) if f.name in ("kernel_backend", "scan_backend")
)
CHUNKED, LOOP = "chunked", "torch"  # on CUDA, ``torch`` is the PyTorch loop over L
NAMES = ("y", "u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def assert_close_relative(
    actual: list[torch.Tensor], expected: list[torch.Tensor], out: float, grad: float
) -> None:
    """Outputs within ``out`` of max(1, |expected|), gradients within ``grad`` of their largest entry."""
    for name, a, e in zip(NAMES, actual, expected, strict=True):
        scale = max(1.0, e.abs().max().item()) if name == "y" else e.abs().max().item()
        tol = (out if name == "y" else grad) * scale
        err = (a.detach().cpu().double() - e.detach().cpu().double()).abs().max().item()
        assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("length", [96, 720])
def test_chunked_on_cuda_matches_cpu_reference(length: int) -> None:
    expected = values_and_grads(selective_scan_ref, scan_inputs("cpu", length=length))
    actual = values_and_grads(selective_scan_chunked, scan_inputs("cuda", length=length))
    assert actual[0].device.type == "cuda"
    assert_close_relative(actual, expected, 1e-5, 1e-4)


def test_chunked_under_cuda_bf16_autocast_keeps_fp32_recurrence() -> None:
    xs = scan_inputs("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = selective_scan_chunked(*(x.bfloat16() if x.dim() == 3 else x for x in xs))
    assert y.dtype == torch.bfloat16
    ref = selective_scan_ref(
        *(x.detach().bfloat16().float().cpu() if x.dim() == 3 else x.detach().cpu() for x in xs)
    )
    torch.testing.assert_close(y.float().cpu(), ref, rtol=2**-7, atol=1e-3)


def small_stm3(backend: str, info: DataInfo) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = STM3Config(**{BACKEND_KEY: backend, "hidden_dim": 2, "node_emb_dim": 4})  # type: ignore[arg-type]
    return build_model(cfg, info).cuda()


def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """One seeded forward + backward (L1 + aux losses); returns the loss."""
    torch.manual_seed(1)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        pred, aux = model(x)
        loss = (pred.float() - y).abs().mean() + sum(aux.values())
    loss.backward()
    return loss.detach()


def test_stm3_chunked_matches_loop_and_trains_in_bf16() -> None:
    info = DataInfo(num_nodes=20, input_len=96, horizon=12)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 96, 20, 3, generator=g).cuda()
    y = torch.randn(4, 12, 20, 1, generator=g).cuda()
    chunked, loop = small_stm3(CHUNKED, info), small_stm3(LOOP, info)
    loss_c, loss_l = step(chunked, x, y), step(loop, x, y)
    torch.testing.assert_close(loss_c, loss_l, rtol=1e-5, atol=1e-5)
    largest = max(p.grad.abs().max().item() for p in loop.parameters() if p.grad is not None)
    for (name, pc), pl in zip(chunked.named_parameters(), loop.parameters(), strict=True):
        if pl.grad is not None:
            err = (pc.grad - pl.grad).abs().max().item()
            assert err <= 1e-4 * largest, f"{name}: gradient error {err:.3g}"
    chunked.zero_grad()
    loss_bf16 = step(chunked, x, y, bf16=True)
    assert torch.isfinite(loss_bf16)
    assert all(torch.isfinite(p.grad).all() for p in chunked.parameters() if p.grad is not None)
    assert abs(loss_bf16.item() - loss_c.item()) <= 0.05 * abs(loss_c.item())


def test_bf16_mixed_lightning_run_with_chunked(tmp_path: Path) -> None:
    """The training entry point on one GPU, bf16-mixed, CSV logging only (no W&B needed)."""
    from stm3_lightning.config.compose import compose
    from stm3_lightning.run.train import train

    cfg = compose(
        [
            "model=stm3",
            f"model.{BACKEND_KEY}={CHUNKED}",
            "model.hidden_dim=2",
            "trainer=gpu",
            "trainer.precision=bf16-mixed",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
            "logger=csv",
            "data=synthetic",
            "data.synthetic.num_nodes=12",
            "data.synthetic.num_steps=700",
            "data.input_len=24",
            "data.horizon=12",
            "callbacks.progress_bar=none",
            f"paths.output_dir={tmp_path}",
        ]
    )
    results = train(cfg)
    assert all(torch.isfinite(torch.tensor(v)) for v in results["overall"].values())
    assert (tmp_path / "csv" / "metrics.csv").is_file()
