"""Map state dicts between this package's STM3 parameter names and the official release's (``model/STM3.py``).

Only names change (tensors are shared, not copied); the Mamba experts already use the release's names. Release
checkpoints saved from ``nn.DataParallel`` carry a ``module.`` prefix, which is stripped.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

from torch import Tensor

# (ours, release) name templates; each {placeholder} matches the pattern below and is carried over.
RULES: tuple[tuple[str, str], ...] = (
    ("node_embeddings", "node_embeddings"),
    ("embedding.convs.{i}.{param}", "multiscale_convs.{i}.{param}"),
    ("embedding.feature_transform.{param}", "feature_transform.0.{param}"),
    ("layers.{i}.spatial.graph.{pool}", "layers.{i}.dgcn.{pool}"),
    ("layers.{i}.spatial.attention.{proj}.{param}", "layers.{i}.dgcn.{proj}.{param}"),
    ("layers.{i}.spatial.{norm}.{param}", "layers.{i}.dgcn.{norm}.{param}"),
    ("layers.{i}.moe.router.gate.weight", "layers.{i}.moe.gate.weight"),
    ("layers.{i}.moe.{rest}", "layers.{i}.moe.{rest}"),
    ("head.proj.{param}", "time_distributed.0.{param}"),
)
PLACEHOLDERS: dict[str, str] = {
    "i": r"\d+",
    "param": r"weight|bias",
    "pool": r"weights_pool|bias_pool",
    "proj": r"q_proj|k_proj|v_proj|out_proj",
    "norm": r"norm1|norm2",
    "rest": r"(?:shared_gate|experts\.\d+|shared_expert)\..+",
}


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(p) if k % 2 == 0 else f"(?P<{p}>{PLACEHOLDERS[p]})" for k, p in enumerate(parts)
    )
    return re.compile(regex + r"\Z")


_FORWARD = [(_compile(ours), release) for ours, release in RULES]
_BACKWARD = [(_compile(release), ours) for ours, release in RULES]


def _rename(name: str, rules: list[tuple[re.Pattern[str], str]], source: str) -> str:
    for pattern, template in rules:
        match = pattern.match(name)
        if match:
            return template.format(**match.groupdict())
    raise ValueError(
        f"Parameter '{name}' has no counterpart in the {source}; only the released STM3 architecture "
        "(node router, shared expert, AGCCN with scale attention) can be converted."
    )


def to_release_name(name: str) -> str:
    """Our parameter name -> the release's."""
    return _rename(name, _FORWARD, "official release")


def from_release_name(name: str) -> str:
    """A release parameter name (``module.`` prefix allowed) -> ours."""
    return _rename(name.removeprefix("module."), _BACKWARD, "stm3_lightning STM3 model")


def to_release_state_dict(state_dict: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
    """Our ``state_dict`` -> one loadable by the release's ``STM3`` (same order, same tensors)."""
    return OrderedDict((to_release_name(k), v) for k, v in state_dict.items())


def from_release_state_dict(state_dict: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
    """A release ``STM3`` state dict (e.g. ``torch.load('pre-trained/PEMSD8.pth')``) -> ours."""
    return OrderedDict((from_release_name(k), v) for k, v in state_dict.items())
