from __future__ import annotations

import numpy as np
import pytest

from stm3_lightning.data.scaler import ScalerError, StandardScaler


def test_global_and_per_node_statistics() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, size=(200, 3)).astype(np.float32)
    g = StandardScaler.fit(x, per_node=False)
    np.testing.assert_allclose(g.mean, np.full(3, x.mean()), rtol=1e-5)
    np.testing.assert_allclose(g.std, np.full(3, x.std()), rtol=1e-5)
    p = StandardScaler.fit(x, per_node=True)
    np.testing.assert_allclose(p.mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(p.transform(x).std(0), 1.0, rtol=1e-4)


def test_nan_ignored() -> None:
    x = np.array([[1.0], [np.nan], [3.0]], dtype=np.float32)
    s = StandardScaler.fit(x, per_node=True)
    assert s.mean[0] == pytest.approx(2.0) and s.std[0] == pytest.approx(1.0)


def test_constant_series_rejected() -> None:
    x = np.ones((10, 2), dtype=np.float32)
    x[:, 0] = np.arange(10)
    with pytest.raises(ScalerError, match=r"node\(s\) \[1\].*constant"):
        StandardScaler.fit(x, per_node=True)
