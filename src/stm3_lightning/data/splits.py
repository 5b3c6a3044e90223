"""Chronological train/val/test protocols (reference §5).

A split is a triple of :class:`Segment` s, half-open row ranges ``[start, stop)`` of the raw series, plus the range
of windows each segment yields. Windows are stride 1: ``x = [t, t+L)``, ``y = [t+L, t+L+H)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from stm3_lightning.config.schema import SplitConfig

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


class SplitError(ValueError):
    """A split that cannot be made from the series (too short, bad borders)."""


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` of the raw series; window starts are ``first .. first + num_windows - 1``."""

    start: int
    stop: int
    first: int
    num_windows: int


def num_windows(length: int, input_len: int, horizon: int) -> int:
    """Windows of stride 1 in a segment of ``length`` rows (``length - L - H + 1``, never negative)."""
    return max(length - input_len - horizon + 1, 0)


def _segment(start: int, stop: int, input_len: int, horizon: int) -> Segment:
    return Segment(start, stop, start, num_windows(stop - start, input_len, horizon))


def _row_borders(cfg: SplitConfig, total: int, input_len: int) -> list[tuple[int, int]]:
    ratios = cfg.ratios
    if cfg.mode == "ratio":
        # split_data_by_ratio of the release: test = last int(T*r_test), val before it, no look-back overlap.
        n_test = int(total * ratios[2])
        n_val_test = int(total * (ratios[1] + ratios[2]))
        return [(0, total - n_val_test), (total - n_val_test, total - n_test), (total - n_test, total)]
    if cfg.mode == "ratio_lookback":
        # TSLib (Electricity): train int(0.7T), test int(0.2T), val the rest; val/test start L steps early.
        n_train, n_test = int(total * ratios[0]), int(total * ratios[2])
        n_val = total - n_train - n_test
        return [
            (0, n_train),
            (max(n_train - input_len, 0), n_train + n_val),
            (max(total - n_test - input_len, 0), total),
        ]
    if cfg.mode == "borders":
        b0, b1, b2 = cfg.borders
        if not 0 < b0 < b1 <= b2 <= total:
            raise SplitError(
                f"data.split.borders {list(cfg.borders)} must satisfy 0 < train_end < val_end <= test_end <= {total} "
                "(the series length); fix the borders or the data file."
            )
        return [(0, b0), (max(b0 - input_len, 0), b1), (max(b1 - input_len, 0), b2)]
    raise SplitError(f"Unknown split mode '{cfg.mode}'; use ratio, ratio_lookback, borders or window.")


def make_segments(cfg: SplitConfig, total: int, input_len: int, horizon: int) -> dict[str, Segment]:
    """Cut a series of ``total`` rows into train/val/test segments according to ``cfg``.

    Raises :class:`SplitError` with a one-sentence fix when a part yields no window.
    """
    if cfg.mode == "window":
        # STAEformer/LargeST: windows of the whole series, split by ratio (train and val rounded, test the rest).
        count = num_windows(total, input_len, horizon)
        n_train, n_val = round(count * cfg.ratios[0]), round(count * cfg.ratios[1])
        sizes = [n_train, n_val, count - n_train - n_val]
        firsts = [0, n_train, n_train + n_val]
        segs = {
            name: Segment(first, first + size + input_len + horizon - 1, first, size)
            for name, first, size in zip(SPLIT_NAMES, firsts, sizes, strict=True)
        }
    else:
        segs = {
            name: _segment(start, stop, input_len, horizon)
            for name, (start, stop) in zip(SPLIT_NAMES, _row_borders(cfg, total, input_len), strict=True)
        }
    for name, seg in segs.items():
        if seg.num_windows < 1:
            raise SplitError(
                f"The {name} part has {seg.stop - seg.start} steps, fewer than input_len + horizon = "
                f"{input_len + horizon}; use a longer series or smaller data.input_len/data.horizon."
            )
    return segs


def train_rows(segments: dict[str, Segment], input_len: int, horizon: int) -> tuple[int, int]:
    """Rows the scaler may be fitted on: exactly those covered by training windows."""
    seg = segments["train"]
    return seg.first, seg.first + seg.num_windows + input_len + horizon - 1
