"""Parameter initialisation schemes selected by ``model.init``.

``official`` is run.py's loop after building the model: every tensor with more than one dimension is
xavier-uniform, every other one U(0, 1). It overrides Mamba's A/D/dt initialisation (A ~ -1 instead of -[1..n],
D ~ U(0, 1), initial step ~ softplus(U(0, 1) + U(0, 1)), reference §2.6). The network registers its parameters in the
release's order, so the loop consumes the random stream exactly as run.py does.
"""

from __future__ import annotations

from torch import nn

from stm3_lightning.models.stm3.mamba import MultiscaleMamba


def official_init(model: nn.Module) -> None:
    """run.py's global re-initialisation, in parameter order."""
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
        else:
            nn.init.uniform_(p)


def mamba_ssm_init(model: nn.Module) -> None:
    """Give every multiscale Mamba Mamba's A/D/dt initialisation, with a zero dt offset (so dt is Mamba's)."""
    for module in model.modules():
        if isinstance(module, MultiscaleMamba):
            module.reset_ssm_parameters(dt_offset=0.0)


def apply_init(model: nn.Module, scheme: str) -> None:
    """scheme: ``official`` | ``mamba`` (official, then Mamba's SSM init) | ``default`` (constructor init)."""
    if scheme not in ("official", "mamba", "default"):
        raise ValueError(f"Unknown init scheme {scheme!r}; choose official, mamba or default.")
    if scheme in ("official", "mamba"):
        official_init(model)
    if scheme == "mamba":
        mamba_ssm_init(model)
