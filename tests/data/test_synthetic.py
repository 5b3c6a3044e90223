from __future__ import annotations

import numpy as np

from stm3_lightning.config.schema import SyntheticConfig
from stm3_lightning.data.synthetic import generate_synthetic


def test_deterministic_and_periodic() -> None:
    cfg = SyntheticConfig(num_nodes=10, num_steps=288 * 8, seed=3)
    a, adj = generate_synthetic(cfg)
    b, _ = generate_synthetic(cfg)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (288 * 8, 10) and adj.shape == (10, 10)
    np.testing.assert_allclose(adj.sum(1), 1.0, rtol=1e-5)
    assert (a >= 0).all()
    # daily periodicity: lag-288 correlation is high
    x = a - a.mean(0)
    corr = (x[288:] * x[:-288]).sum() / np.sqrt((x[288:] ** 2).sum() * (x[:-288] ** 2).sum())
    assert corr > 0.8
    c, _ = generate_synthetic(SyntheticConfig(num_nodes=10, num_steps=288 * 8, seed=4))
    assert not np.allclose(a, c)
