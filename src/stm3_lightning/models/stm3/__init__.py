"""STM3 (Mixture of Multiscale Mamba) and STM2, faithful to the official release by default.

Modules: ``config`` (schemas), ``embedding``, ``agccn``, ``scale_attention``, ``mamba``, ``router``, ``moe``,
``contrastive``, ``head``, ``init``, ``network`` (the registered models), ``convert`` (release state dicts)
and ``kernels`` (scan, causal conv and scale attention with interchangeable backends).
"""

from stm3_lightning.models.stm3.config import STM2Config, STM3Config
from stm3_lightning.models.stm3.network import STM3Network

__all__ = ["STM2Config", "STM3Config", "STM3Network"]
