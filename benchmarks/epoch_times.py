"""How long one training epoch takes for every dataset at the paper settings (``experiments/reproduce/*.yaml``).

For each dataset the paper configuration is composed as ``stm3 train experiment=reproduce/<name>`` would compose it
(input length, horizon, batch size, model sizes). A few training steps (forward, loss with the auxiliary losses,
backward, AdamW: :class:`benchmarks.common.TrainStep`) are timed on batches of the training loader when the data
file is in ``--data-dir``, else on random batches of the same shape. The epoch time is an **extrapolation**:
``steps per epoch x (median step time + median data time)``, with ``steps = training windows // batch`` (the
window count from the dataset's length and split protocol); validation is not included. When the paper batch does
not fit in the available memory, the largest power of two below it is timed and the time scaled per window (the
JSON and the table say so).

    python -m benchmarks.epoch_times                     # every dataset, paper settings (minutes per dataset)
    python -m benchmarks.epoch_times --only pems08,etth1 --repeats 5
    python -m benchmarks.epoch_times --quick             # tiny shapes, seconds (smoke test; numbers meaningless)

Writes a table to stdout and ``benchmarks/results/epoch_times.json``. Measure on an idle machine: the numbers are
wall-clock times.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from benchmarks.common import (
    RESULTS_DIR,
    PeakMemory,
    TrainStep,
    apply_threads,
    format_table,
    machine_info,
    random_batch,
    section,
    write_json,
)
from benchmarks.train_step import Batches, epoch_estimate, fitting_batch, training_batch
from stm3_lightning.config.compose import compose, project_root
from stm3_lightning.data.catalogue import DATASETS
from stm3_lightning.data.errors import DataError
from stm3_lightning.data.splits import make_segments
from stm3_lightning.models.registry import build_model
from stm3_lightning.reporting.summary import data_info
from stm3_lightning.types import DataInfo

PROBE_BATCH = 2
# --quick: tiny shapes so every dataset config runs in a second (checks the script, not the machine).
QUICK = ["data.input_len=8", "data.horizon=4", "data.batch_size=4"]
QUICK_NODES = 6


def reproduce_names() -> list[str]:
    """Datasets with a paper configuration: ``experiments/reproduce/<name>.yaml``."""
    return sorted(p.stem for p in (project_root() / "experiments" / "reproduce").glob("*.yaml"))


def paper_config(name: str, data_dir: str | None, quick: bool):
    overrides = [f"experiment=reproduce/{name}", "data.download=false", *(QUICK if quick else [])]
    if data_dir:
        overrides.append(f"paths.data_dir={data_dir}")
    return compose(overrides)


def train_windows(cfg) -> int | None:
    """Training windows of the dataset's full length under its split protocol (None: the registry has no length)."""
    steps = DATASETS[cfg.data.name].num_steps
    if steps is None:
        return None
    return make_segments(cfg.data.split, steps, cfg.data.input_len, cfg.data.horizon)["train"].num_windows


def dataset_batches(cfg, quick: bool, seed: int) -> Batches:
    """The training loader of the dataset when its file is present (not in --quick), else random batches."""
    if not quick:
        from stm3_lightning.data.datamodule import SpatioTemporalDataModule

        dm = SpatioTemporalDataModule(cfg.data, cfg.paths.data_dir)
        try:
            dm.setup()
        except (OSError, DataError) as exc:  # a missing or unreadable file: time random batches instead
            reason = str(exc).splitlines()[0]
        else:
            mean, std = dm.scaler.tensors()
            source = f"{cfg.data.name} train loader"
            return Batches(source, dm.window_counts["train"], dm.train_dataloader(), dm.info, mean, std)
    else:
        reason = "--quick"
    info = data_info(cfg)
    if quick:
        info = DataInfo(QUICK_NODES, info.input_len, info.horizon, steps_per_day=info.steps_per_day)
    batch = random_batch(cfg.data.batch_size, info, channels(cfg), seed=seed)  # the loader's channel layout
    return Batches(f"random ({reason})", train_windows(cfg), [batch], info)


def channels(cfg) -> int:
    return 1 + 2 * int(cfg.data.time_features)  # value, then time of day and day of week


def time_dataset(name: str, args: argparse.Namespace) -> dict[str, object]:
    """Probe the memory a window needs, time ``args.repeats`` steps at the paper batch (or what fits), extrapolate."""
    cfg = paper_config(name, args.data_dir, args.quick)
    batches = dataset_batches(cfg, args.quick, args.seed)
    torch.manual_seed(args.seed)
    model = build_model(cfg.model, batches.info)
    probe_x, probe_y = next(batches.iterator(PROBE_BATCH, args.seed))
    with PeakMemory() as probe:
        TrainStep(model, mean=batches.mean, std=batches.std)(probe_x, probe_y)
    per_window = (probe.extra_mib or 0.0) / PROBE_BATCH
    batch, shortfall = fitting_batch(cfg.data.batch_size, per_window)
    timed = training_batch(model, batches, batch, args.repeats, args.seed)
    info = batches.info
    return {
        "dataset": name,
        "nodes": info.num_nodes,
        "input_len": info.input_len,
        "horizon": info.horizon,
        "batch": cfg.data.batch_size,
        "model": cfg.model.name,
        "params": sum(p.numel() for p in model.parameters()),
        "source": batches.source,
        "memory_note": shortfall,
        "step": timed["step"],
        "data": timed["data"],
        "measured_batch": batch,
        "peak_rss_mib": timed.get("peak_rss_mib"),
        **epoch(timed, batches.train_windows, cfg.data.batch_size),
    }


def epoch(timed: dict[str, object], windows: int | None, batch: int) -> dict[str, object]:
    if windows is None:
        basis = "no epoch: no data file, and the registry does not know the series length"
        return {"epoch_seconds": None, "epoch_steps": None, "train_windows": None, "epoch_basis": basis}
    return epoch_estimate(timed, windows, batch)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default="", help="comma-separated datasets (default: every reproduce config)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per dataset (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument(
        "--data-dir", default=os.environ.get("STM3_DATA_DIR"), help="folder of the data files"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny shapes and random data: a smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "epoch_times.json")
    args = parser.parse_args(argv)
    known = reproduce_names()
    args.names = [n for n in args.only.split(",") if n] or known
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error(f"no paper config for {', '.join(unknown)}; choose from {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    apply_threads(args.threads)
    meta = machine_info()
    print(
        f"{meta['cpu']}, {meta['torch_threads']} threads, torch {meta['torch']}, load {meta['load_avg_at_start']}"
    )
    rows = []
    for name in args.names:
        with section(f"{name}: paper settings (experiments/reproduce/{name}.yaml)"):
            rows.append(row := time_dataset(name, args))
            print(f"   {row['source']}; step {row['step']['median_s']:.3f} s; {row['epoch_basis']}")
    header = [
        "dataset",
        "N",
        "L->H",
        "batch",
        "windows",
        "steps",
        "step s",
        "epoch min (extrapolated)",
        "data",
    ]
    table = [
        [
            r["dataset"],
            r["nodes"],
            f"{r['input_len']}->{r['horizon']}",
            r["batch"]
            if r["measured_batch"] == r["batch"]
            else f"{r['batch']} (timed {r['measured_batch']})",
            r["train_windows"],
            r["epoch_steps"],
            r["step"]["median_s"],
            None if r["epoch_seconds"] is None else r["epoch_seconds"] / 60,
            "random" if r["source"].startswith("random") else "file",
        ]
        for r in rows
    ]
    print("\n" + format_table(table, header))
    result = {"meta": meta, "config": {**vars(args), "out": str(args.out)}, "results": rows}
    print(f"\nwrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
