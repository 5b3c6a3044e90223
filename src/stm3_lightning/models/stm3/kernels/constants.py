"""Sizes shared by the Python side and the C++ kernels in ``csrc/``: their one definition.

The loader passes each one to the compiler as ``-D<name>=<value>`` (see :data:`DEFINES`); ``csrc/prelude.h``
refuses to compile without them and no C++ file defines them itself.
"""

LANES = 16
"""Float lanes of the kernels' vector type (C: ``W``); channels are zero-padded to a multiple of it."""

ATTENTION_MAX_SIZE = 16
"""Largest token dimension D and number of scales Q of the scale-attention kernel (C: ``MS``, static buffers)."""

DEFINES: dict[str, int] = {"STM3_LANES": LANES, "STM3_ATTENTION_MAX_SIZE": ATTENTION_MAX_SIZE}
"""Preprocessor macros passed to every kernel compile."""
