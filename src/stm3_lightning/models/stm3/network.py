"""The STM3 network (Mixture of Multiscale Mamba) and its mixture-free variant STM2, registered as models.

Internally activations live in ``[B, N, L, D, Q]`` (node-major, so the mixture rows ``(sample, node)`` are a free
view); every operation is the release's up to floating-point summation order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stm3_lightning.models.stm3.agccn import AGCCN
from stm3_lightning.models.stm3.config import STM2Config, STM3Config, coerce_config
from stm3_lightning.models.stm3.contrastive import scale_representations
from stm3_lightning.models.stm3.embedding import MultiscaleEmbedding
from stm3_lightning.models.stm3.head import ForecastHead
from stm3_lightning.models.stm3.init import apply_init
from stm3_lightning.models.stm3.mamba import MultiscaleMamba
from stm3_lightning.models.stm3.moe import MixtureOfExperts, MoEOutput
from stm3_lightning.types import DataInfo


class STM3Layer(nn.Module):
    """``X <- X + AGCCN(X)``, then ``X <- X + Mixer(X)`` with Mixer the mixture (STM3) or one Mamba (STM2).

    The AGCCN block is left out when both its graph convolution and its scale attention are switched off.
    """

    def __init__(self, cfg: STM2Config) -> None:
        super().__init__()
        d, q = cfg.hidden_dim, len(cfg.scales)
        self.spatial = (
            AGCCN(
                d,
                q,
                cfg.node_emb_dim,
                cfg.cheb_k,
                graph=cfg.agccn,
                attention=cfg.scale_attention,
                kernel_backend=cfg.kernel_backend,
            )
            if cfg.agccn or cfg.scale_attention
            else None
        )
        mamba_kwargs = {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand}
        mamba_kwargs.update(kernel_backend=cfg.kernel_backend, recompute=cfg.recompute)
        if isinstance(cfg, STM3Config):
            self.moe: MixtureOfExperts | None = MixtureOfExperts(
                d * q,
                d,
                cfg.scales,
                cfg.node_emb_dim,
                num_experts=cfg.num_experts,
                top_k=cfg.top_k,
                router=cfg.router,
                router_noise=cfg.router_noise,
                router_noise_at_eval=cfg.router_noise_at_eval,
                router_grad=cfg.router_grad,
                shared_expert=cfg.shared_expert,
                mamba_kwargs=mamba_kwargs,
            )
            self.mamba: MultiscaleMamba | None = None
        else:
            self.moe = None
            self.mamba = MultiscaleMamba(d * q, cfg.scales, **mamba_kwargs)

    def forward(
        self, x: Tensor, node_emb: Tensor, with_means: bool = False
    ) -> tuple[Tensor, Tensor, MoEOutput | None]:
        """x: [B, N, L, D, Q], node_emb: [N, d_e] -> (new x [B, N, L, D, Q], mixer input [B*N, L, M], mixture
        output or None for STM2)."""
        if self.spatial is not None:
            x = x + self.spatial(x, node_emb)
        rows = x.flatten(0, 1).flatten(2)  # [B*N, L, M], channel d * Q + q
        if self.moe is None:
            return x + self.mamba(rows).view_as(x), rows, None
        mixed = self.moe(rows, node_emb, with_means=with_means)
        return x + mixed.out.view_as(x), rows, mixed


class STM3Network(nn.Module):
    """STM3 (``STM3Config``) or STM2 (``STM2Config``) forecaster: ``forward(x: [B, L, N, C]) -> (pred, aux)``.

    ``pred``: [B, H, N, C_out]; the model reads the first ``info.input_dim`` channels of x (the release ignores the
    time features). ``aux``: ``{"contrastive/layer<i>": lambda * L_cl}`` per STM3 layer, present only in training
    mode when ``contrastive != off`` and ``contrast_loss_weight > 0``; adding it to the loss gives exactly the
    release's gradient (which injects it with ``AddAuxiliaryLoss``). Random numbers, as released: the router noise
    comes from the tensors' device generator, the contrastive negatives from the global CPU generator, in the order
    layer 0 noise, layer 0 negatives, layer 1 noise, ...

    Diagnostics contract (no cost unless called; ``has_router`` says whether there is anything to diagnose):
    ``routing_diagnostics(x: [B, L, N, C], all_experts=False) -> list[dict[str, Tensor]]``, one dict per STM3 layer
    (empty list for STM2), computed under ``no_grad`` in the model's current train/eval mode, with keys

    - ``"probs"`` [B, N, E]: router probabilities without noise;
    - ``"probs_noisy"`` [B, N, E]: with the noise drawn for this pass (equal to ``probs`` when no noise is drawn);
    - ``"assign"`` [B, N] long: the top-1 expert actually used;
    - ``"expert_repr"`` [B*N, D, Q]: time-mean of the routed (top-1) expert's output reshaped to [D, Q] and
      L2-normalised over D, as in the contrastive loss;
    - ``"expert_outputs"`` [E, B*N, L, M]: every routed expert run on the same mixer inputs (only when
      ``all_experts=True``).

    Rows of ``B*N`` are ordered (sample, node). The pass draws router noise like a forward pass does.
    """

    def __init__(self, cfg: STM2Config, info: DataInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_nodes = info.num_nodes
        self.input_len = info.input_len
        self.input_dim = info.input_dim
        self.mixture = isinstance(cfg, STM3Config)
        self.node_embeddings = nn.Parameter(torch.empty(info.num_nodes, cfg.node_emb_dim))
        nn.init.xavier_uniform_(self.node_embeddings)
        self.embedding = MultiscaleEmbedding(info.input_dim, cfg.hidden_dim, cfg.scales, cfg.preprocess_axis)
        self.layers = nn.ModuleList(STM3Layer(cfg) for _ in range(cfg.num_layers))
        width = cfg.hidden_dim * len(cfg.scales)
        self.head = ForecastHead(info.input_len, width, info.horizon, info.output_dim)
        apply_init(self, cfg.init)

    @property
    def has_router(self) -> bool:
        """Whether the layers route (STM3: yes; STM2: no), i.e. ``routing_diagnostics`` has something to report."""
        return self.mixture

    @property
    def contrastive_on(self) -> bool:
        """Whether a training-mode forward adds the contrastive loss."""
        cfg = self.cfg
        return self.mixture and cfg.contrastive != "off" and cfg.contrast_loss_weight > 0

    def _embed(self, x: Tensor) -> Tensor:
        """x: [B, L, N, C] -> [B, N, L, D, Q]."""
        if x.dim() != 4 or x.shape[1] != self.input_len or x.shape[2] != self.num_nodes:
            raise ValueError(
                f"STM3 expects x of shape [B, {self.input_len}, {self.num_nodes}, C], got {list(x.shape)}; "
                "build the model with the data's input_len and num_nodes."
            )
        if x.shape[3] < self.input_dim:
            raise ValueError(f"STM3 reads {self.input_dim} input channel(s) but x has only {x.shape[3]}.")
        return self.embedding(x[..., : self.input_dim])

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x: [B, L, N, C] -> (pred [B, H, N, C_out], aux {name: weighted scalar loss})."""
        h = self._embed(x)
        contrast = self.training and self.contrastive_on
        aux: dict[str, Tensor] = {}
        for i, layer in enumerate(self.layers):
            h, _, mixed = layer(h, self.node_embeddings, with_means=contrast)
            if contrast:
                aux[f"contrastive/layer{i}"] = self.cfg.contrast_loss_weight * self._contrastive(layer, mixed)
        return self.head(h), aux

    def _contrastive(self, layer: STM3Layer, mixed: MoEOutput) -> Tensor:
        cfg = self.cfg
        return layer.moe.contrastive_loss(
            mixed,
            cfg.contrastive,
            temperature=cfg.temperature,
            gamma1=cfg.gamma1,
            gamma2=cfg.gamma2,
            num_negatives=cfg.num_negatives,
        )

    @torch.no_grad()
    def routing_diagnostics(self, x: Tensor, all_experts: bool = False) -> list[dict[str, Tensor]]:
        """Per-layer routing and expert-representation tensors (see the class docstring for the contract)."""
        if not self.mixture:
            return []
        h = self._embed(x)
        batch, num_experts = x.shape[0], self.cfg.num_experts
        out = []
        for layer in self.layers:
            h, rows, mixed = layer(h, self.node_embeddings, with_means=True)
            routing = mixed.routing
            assign = routing.indices[:, 0]
            top_means = mixed.means[torch.arange(assign.numel(), device=assign.device), assign]  # [B*N, M]
            diag = {
                "probs": routing.probs.view(batch, -1, num_experts),
                "probs_noisy": routing.probs_noisy.view(batch, -1, num_experts),
                "assign": assign.view(batch, -1),
                "expert_repr": scale_representations(top_means, self.cfg.hidden_dim),
            }
            if all_experts:
                diag["expert_outputs"] = layer.moe.run_all_experts(rows)
            out.append(diag)
        return out


def build_stm3(cfg: object, info: DataInfo) -> STM3Network:
    """STM3 from a ``model=stm3`` config (dataclass, DictConfig or mapping)."""
    return STM3Network(coerce_config(cfg, STM3Config), info)


def build_stm2(cfg: object, info: DataInfo) -> STM3Network:
    """STM2 (no mixture: one multiscale Mamba per layer) from a ``model=stm2`` config."""
    return STM3Network(coerce_config(cfg, STM2Config), info)
