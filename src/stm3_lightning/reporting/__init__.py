"""Reporting: model summary, ablation grids and their report, the baselines table, plots."""
