from __future__ import annotations

import numpy as np
import pytest
import torch

from stm3_lightning.config.compose import compose
from stm3_lightning.data.datamodule import SpatioTemporalDataModule
from stm3_lightning.data.errors import DataError
from stm3_lightning.data.splits import make_segments


def _dm(args: list[str], data_dir=".") -> SpatioTemporalDataModule:
    cfg = compose(["model=linear", *args])
    dm = SpatioTemporalDataModule(cfg.data, data_dir)
    dm.setup()
    return dm


def test_synthetic_windows_are_views_of_one_tensor() -> None:
    dm = _dm(["data.synthetic.num_nodes=8", "data.synthetic.num_steps=600"])
    ds = dm.datasets["train"]
    x, y = ds[5]
    assert x.shape == (24, 8, 3) and y.shape == (12, 8, 1)
    assert x.untyped_storage().data_ptr() == ds.inputs.untyped_storage().data_ptr()
    xb, yb = ds.__getitems__([5, 6])
    torch.testing.assert_close(xb[0], x)
    torch.testing.assert_close(yb[1], ds[6][1])
    assert dm.window_counts == {k: s.num_windows for k, s in make_segments(dm.cfg.split, 600, 24, 12).items()}


def test_scaler_uses_train_rows_only() -> None:
    dm = _dm(["data.synthetic.num_nodes=4", "data.synthetic.num_steps=600"])
    from stm3_lightning.data.synthetic import generate_synthetic

    values, _ = generate_synthetic(dm.cfg.synthetic)
    train_stop = dm.segments["train"].stop
    assert dm.scaler.mean[0] == pytest.approx(values[:train_stop].mean(), rel=1e-5)
    assert dm.scaler.mean[0] != pytest.approx(values.mean(), rel=1e-4)


def test_batches_from_loader() -> None:
    dm = _dm(["data.synthetic.num_nodes=4", "data.synthetic.num_steps=600", "data.batch_size=16"])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 24, 4, 3) and y.shape == (16, 12, 4, 1)
    assert len(dm.val_dataloader().dataset) == dm.window_counts["val"]


def test_nan_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from stm3_lightning.data import datamodule

    values = np.abs(np.random.default_rng(0).normal(size=(600, 3))).astype(np.float32) + 1
    values[100, 1] = np.nan
    monkeypatch.setattr(datamodule, "read_series", lambda cfg, d: (values.copy(), None))
    with pytest.raises(DataError, match="NaN/inf.*step 100, node 1.*nan_policy=mask"):
        _dm([])
    dm = _dm(["data.nan_policy=mask", "data.null_val=0.0"])
    assert dm.datasets["train"].targets[100, 1, 0] == 0.0
    assert torch.isfinite(dm.datasets["train"].inputs).all()


def test_short_series_fails_clearly() -> None:
    with pytest.raises(DataError, match="fewer than input_len"):
        _dm(["data.synthetic.num_steps=50"])


def test_pems08_real_split_counts(real_data_dir) -> None:
    dm = _dm(["data=pems08", "data.input_len=12", "data.horizon=12"], real_data_dir)
    assert dm.num_nodes == 170
    assert dm.window_counts == {"train": 10714 - 23, "val": 3571 - 23, "test": 3571 - 23}
    # global scaler fitted on the first 10714 steps only
    values = dm.datasets["train"].targets[:10714, :, 0].numpy()
    assert dm.scaler.mean[0] == pytest.approx(values.mean(), rel=1e-5)


def test_prepare_data_fetches_and_verifies_without_loading(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0's prepare_data only makes the file present; setup (every rank) reads it and never downloads."""
    from stm3_lightning.data import formats
    from stm3_lightning.data.errors import MissingDataError

    cfg = compose(["model=linear", "data=pems08", "data.download=false"])
    dm = SpatioTemporalDataModule(cfg.data, tmp_path)
    with pytest.raises(MissingDataError, match="No PEMS08 data found.*allow downloading"):
        dm.prepare_data()
    (tmp_path / "PEMS08").mkdir()
    np.savez(tmp_path / "PEMS08" / "PEMS08.npz", data=np.ones((40, 170, 1), np.float32))

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepare_data read the array")

    monkeypatch.setattr(formats, "read_array", no_reading)
    dm.prepare_data()
    assert not dm.datasets and dm.info.num_nodes == 170  # sized from the catalogue, nothing loaded


def test_setup_never_downloads(tmp_path) -> None:
    from stm3_lightning.data.errors import MissingDataError

    cfg = compose(["model=linear", "data=pems08", "data.download=true"])
    with pytest.raises(MissingDataError, match="No PEMS08 data found"):
        SpatioTemporalDataModule(cfg.data, tmp_path).setup("fit")
    assert not any(tmp_path.iterdir())
