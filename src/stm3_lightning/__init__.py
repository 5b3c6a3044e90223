"""stm3-lightning: reproduce, dissect and extend STM3 (Mixture of Multiscale Mamba, KDD 2026)."""

__version__ = "0.1.0"
