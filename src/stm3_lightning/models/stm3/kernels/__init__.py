"""The kernelled ops of STM3 with interchangeable backends (``model.kernel_backend``, see :mod:`.backends`).

Modules: ``backends`` (names, ``auto`` resolution, per-op choice), ``scan``, ``causal_conv`` and
``scale_attention`` (each op: PyTorch reference, fused CPU kernel registered with ``torch.library``, dispatch),
``build`` (compile, cache and load the C++ of ``csrc/``), ``constants`` (sizes shared with the C++), ``layout``
(the kernels' tensor layouts) and ``threads`` (deterministic batch split over threads).
"""
