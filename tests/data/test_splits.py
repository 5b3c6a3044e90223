from __future__ import annotations

import pytest

from stm3_lightning.config.schema import SplitConfig
from stm3_lightning.data.splits import SplitError, make_segments, num_windows, train_rows


def test_official_ratio_split_pems08_counts() -> None:
    # split_data_by_ratio on T=17856: test = last int(0.2T)=3571, val = int(0.4T)-int(0.2T)=3571.
    segs = make_segments(SplitConfig(mode="ratio"), 17856, 12, 12)
    assert [(s.start, s.stop) for s in segs.values()] == [(0, 10714), (10714, 14285), (14285, 17856)]
    assert [s.num_windows for s in segs.values()] == [10714 - 23, 3571 - 23, 3571 - 23]
    segs96 = make_segments(SplitConfig(mode="ratio"), 17856, 96, 96)
    assert segs96["train"].num_windows == 10714 - 191 == 10523


def test_borders_lookback_ett() -> None:
    segs = make_segments(SplitConfig(mode="borders", borders=[8640, 11520, 14400]), 17420, 96, 96)
    assert (segs["val"].start, segs["val"].stop) == (8640 - 96, 11520)
    assert segs["test"].num_windows == 14400 - (11520 - 96) - 96 - 96 + 1


def test_ratio_lookback_tslib() -> None:
    segs = make_segments(SplitConfig(mode="ratio_lookback", ratios=[0.7, 0.1, 0.2]), 26304, 96, 96)
    n_train, n_test = int(26304 * 0.7), int(26304 * 0.2)
    assert segs["train"].stop == n_train
    assert segs["val"].start == n_train - 96
    assert segs["test"].start == 26304 - n_test - 96


def test_window_split_staeformer_counts() -> None:
    segs = make_segments(SplitConfig(mode="window"), 17856, 12, 12)
    assert [s.num_windows for s in segs.values()] == [10700, 3567, 3566]
    assert segs["val"].first == 10700


def test_too_short_series_fails_clearly() -> None:
    with pytest.raises(SplitError, match="fewer than input_len \\+ horizon"):
        make_segments(SplitConfig(mode="ratio"), 100, 96, 96)


def test_scaler_rows_cover_training_windows_only() -> None:
    segs = make_segments(SplitConfig(mode="ratio"), 1000, 12, 12)
    lo, hi = train_rows(segs, 12, 12)
    assert (lo, hi) == (0, segs["train"].stop)
    assert num_windows(5, 3, 3) == 0
