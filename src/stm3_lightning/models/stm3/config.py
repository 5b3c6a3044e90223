"""Configuration schemas of STM3 and of its mixture-free variant STM2.

Defaults are the official release's PEMSD8 configuration (reference §4), so ``model=stm3`` with no overrides is
the faithful network. Binary switches are booleans (``agccn: false``, ``shared_expert: off``); multi-valued switches
are :class:`~stm3_lightning.choices.Choice` enums, validated and converted by :func:`validate`. Their fields are annotated ``str``
(the members are strings) so that OmegaConf keeps what YAML wrote: YAML reads ``off`` as the boolean false, so
``contrastive: off`` arrives as ``False``/``"False"`` and is accepted, like ``none``, as an alias of ``off``.
``scan_backend`` is the deprecated spelling of ``kernel_backend``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from omegaconf import DictConfig, OmegaConf

from stm3_lightning.choices import Choice
from stm3_lightning.models.stm3.kernels.backends import KernelBackend, warn_once
from stm3_lightning.types import ModelConfig

log = logging.getLogger(__name__)


class PreprocessAxis(Choice):
    node = "node"
    time = "time"


class Init(Choice):
    official = "official"
    mamba = "mamba"
    default = "default"


class Router(Choice):
    node = "node"
    hidden = "hidden"


class RouterGrad(Choice):
    released = "released"
    straight_through = "straight_through"


class Contrastive(Choice):
    released = "released"
    repaired = "repaired"
    off = "off"

    @classmethod
    def _missing_(cls, value: object) -> Contrastive | None:
        # Spellings of "off" that YAML/OmegaConf produce from `off` or that users write.
        return cls.off if value in (False, "False", "false", "none", "None") else None


def choice(default: Choice) -> Any:
    """A config field holding a member of ``type(default)`` (checked and converted by :func:`validate`)."""
    return field(default=default, metadata={"choice": type(default)})


@dataclass
class STM2Config(ModelConfig):
    """A stack of (adaptive graph + scale attention) blocks and one multiscale Mamba per layer (no mixture).

    Sizes: ``hidden_dim`` is D (the release's ``feature_hidden_dim``), the MoE/Mamba width is ``M = D * len(scales)``.
    ``VARIANT_KEYS``: the switches that move the model away from the faithful release (README table); a run's
    variant (W&B group and tags) names those that differ from their defaults.
    """

    VARIANT_KEYS: ClassVar[tuple[str, ...]] = (
        "preprocess_axis",
        "agccn",
        "scale_attention",
        "scales",
        "init",
    )

    name: str = "stm2"
    num_layers: int = 2
    hidden_dim: int = 4
    node_emb_dim: int = 12
    # Kernel sizes of the multiscale convolutions; their count is Q, the number of scales.
    scales: list[int] = field(default_factory=lambda: [1, 3, 5, 7])
    # Axis of the input multiscale convolutions: ``node`` (what the release computes) or ``time`` (the paper).
    preprocess_axis: str = choice(PreprocessAxis.node)
    # Adaptive graph Chebyshev convolution and the causal attention over scales (each can be switched off).
    agccn: bool = True
    scale_attention: bool = True
    cheb_k: int = 3
    # Multiscale Mamba sizes.
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    # ``official``: run.py's global re-init (xavier for >1-D tensors, U(0, 1) otherwise); ``mamba``: the same but
    # Mamba's A/D/dt initialisation kept (dt offset zero); ``default``: the modules' constructor initialisation.
    init: str = choice(Init.official)
    # Implementation of the selective scan, causal conv and scale attention: auto | torch | ref | cuda | chunked.
    kernel_backend: str = choice(KernelBackend.auto)
    # Recompute each Multiscale Mamba's activations in the backward instead of storing them (activation
    # checkpointing): less peak memory for about one more forward of the Mamba blocks; same outputs and gradients.
    recompute: bool = False
    # Deprecated alias of kernel_backend (moved there by validate, which leaves it unset).
    scan_backend: str | None = None


@dataclass
class STM3Config(STM2Config):
    """STM3: STM2 whose Mamba is a mixture of multiscale Mamba experts routed per node, plus a contrastive loss."""

    VARIANT_KEYS: ClassVar[tuple[str, ...]] = (
        *STM2Config.VARIANT_KEYS,
        "router",
        "router_noise",
        "router_noise_at_eval",
        "router_grad",
        "shared_expert",
        "contrastive",
        "contrast_loss_weight",
    )

    name: str = "stm3"
    num_experts: int = 4
    top_k: int = 1
    # ``node``: route on the learned node embedding (released); ``hidden``: on the time-mean of the hidden state.
    router: str = choice(Router.node)
    # Uniform noise ``router_noise * U(0, 1)`` added to the router logits (the release adds it in eval too).
    router_noise: float = 0.01
    router_noise_at_eval: bool = True
    # ``released``: weights p / (sum p + 1e-8), so the gate gets a ~1e-8 gradient; ``straight_through``: same
    # forward value, gradient as if the weights were p.
    router_grad: str = choice(RouterGrad.released)
    # Always-on expert mixed in with a per-node sigmoid gate.
    shared_expert: bool = True
    # Causal contrastive loss: ``released`` (as the code), ``repaired`` (adjacent-scale positives, real negatives,
    # masked logits -inf) or ``off``.
    contrastive: str = choice(Contrastive.released)
    contrast_loss_weight: float = 0.1
    temperature: float = 0.1
    gamma1: float = 0.1
    gamma2: float = 0.1
    num_negatives: int = 10


C = TypeVar("C", bound=STM2Config)


def _move_scan_backend(cfg: STM2Config) -> None:
    """Map the deprecated ``scan_backend`` onto ``kernel_backend`` (once-per-process deprecation message)."""
    if cfg.scan_backend is None:
        return
    message = "model.scan_backend is deprecated; use model.kernel_backend."
    if warn_once("scan_backend", message, DeprecationWarning):
        log.warning(message)  # DeprecationWarnings are hidden by default; the log line is seen
    old = KernelBackend.parse("model.scan_backend", cfg.scan_backend)
    if KernelBackend.parse("model.kernel_backend", cfg.kernel_backend) not in (KernelBackend.auto, old):
        raise ValueError(
            f"model.scan_backend={old} and model.kernel_backend={cfg.kernel_backend} disagree; "
            "keep only model.kernel_backend (model.scan_backend=null)."
        )
    cfg.kernel_backend, cfg.scan_backend = old, None


def _check_positive(cfg: STM2Config, *keys: str) -> None:
    for key in keys:
        if getattr(cfg, key) < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {getattr(cfg, key)}.")


def validate(cfg: STM2Config) -> None:
    """Raise ``ValueError`` (one sentence, naming the key) for values the types cannot rule out.

    Converts the choice fields to their enum members (aliases resolved) and ``scan_backend`` to ``kernel_backend``.
    """
    _move_scan_backend(cfg)
    for f in fields(cfg):
        kind = f.metadata.get("choice")
        if kind is not None:
            setattr(cfg, f.name, kind.parse(f"model.{f.name}", getattr(cfg, f.name)))
    _check_positive(cfg, "num_layers", "hidden_dim", "node_emb_dim", "cheb_k", "d_state", "d_conv", "expand")
    if not cfg.scales or any(int(k) < 1 for k in cfg.scales):
        raise ValueError(
            f"model.scales must be a non-empty list of positive kernel sizes, got {list(cfg.scales)}."
        )
    if not isinstance(cfg, STM3Config):
        return
    _check_positive(cfg, "num_experts", "top_k")
    if cfg.top_k > cfg.num_experts:
        raise ValueError(f"model.top_k={cfg.top_k} exceeds model.num_experts={cfg.num_experts}; lower top_k.")
    if cfg.temperature <= 0:
        raise ValueError(f"model.temperature must be positive, got {cfg.temperature}.")
    if cfg.num_negatives < 0 or cfg.contrast_loss_weight < 0 or cfg.router_noise < 0:
        raise ValueError(
            "model.num_negatives, model.contrast_loss_weight and model.router_noise must be >= 0."
        )


def coerce_config(cfg: Any, schema: type[C]) -> C:
    """Turn ``cfg`` (dataclass, ``DictConfig`` or mapping) into a validated ``schema`` instance."""
    if type(cfg) is schema:
        out = cfg
    else:
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, Mapping):
            raise TypeError(
                f"A model config must be a {schema.__name__}, a DictConfig or a mapping, got {type(cfg)}."
            )
        known = {f.name for f in fields(schema)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(
                f"Unknown key(s) {unknown} for model {schema.name}; valid keys: {sorted(known)}."
            )
        out = schema(**{k: (list(v) if k == "scales" else v) for k, v in cfg.items()})
    validate(out)
    return out
