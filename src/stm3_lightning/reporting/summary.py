"""``stm3 summary``: the resolved config, the model's parameter count and the kernel backend that would run."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from stm3_lightning.data import catalogue
from stm3_lightning.models.registry import build_model
from stm3_lightning.types import DataInfo


def data_info(cfg: DictConfig) -> DataInfo:
    """Model shapes from the config alone (node count from the dataset catalogue, no data loading)."""
    return catalogue.data_info(cfg.data)


def kernel_backend_line(cfg: DictConfig) -> str:
    requested = OmegaConf.select(cfg, "model.kernel_backend", default=None)
    if requested is None:
        return "kernel backend: n/a (model has no kernelled ops)"
    from stm3_lightning.models.stm3.kernels.backends import resolve_backend

    device = torch.device(
        "cuda" if cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
    )
    return (
        f"kernel backend: {resolve_backend(requested, device)} (requested {requested}, device {device.type})"
    )


def summarize(cfg: DictConfig) -> str:
    model = build_model(cfg.model, data_info(cfg))
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return "\n".join(
        [
            OmegaConf.to_yaml(cfg).rstrip(),
            "---",
            f"model: {cfg.model.name} ({type(model).__name__})",
            f"params: {params}",
            f"trainable params: {trainable}",
            kernel_backend_line(cfg),
        ]
    )
