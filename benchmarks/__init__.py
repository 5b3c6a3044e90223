"""Micro-benchmarks of the project's performance-critical kernels (``python -m benchmarks.<name>``)."""
