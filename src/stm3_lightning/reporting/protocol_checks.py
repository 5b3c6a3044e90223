"""Protocol dissection of one finished run: how much each evaluation detail of the release moves its test numbers.

Measured on the run's best-validation checkpoint (re-scored, never retrained), each check cached as
``<run>/protocol/<check>.json`` (recomputed when the checkpoint file or the request changes):

- ``test``: the checkpoint's test metrics at the run's ``eval_seed`` (what ``stm3 eval`` gives), plus the same
  predictions scored as the release's ``Trainer.test`` does (per-batch averaged, :mod:`metrics.per_batch`);
- ``eval_seeds``: test MAE at ``eval_seed = 0 .. n-1`` (the router noise drawn in eval mode);
- ``router_noise``: test MAE/RMSE with ``model.router_noise_at_eval=false``;
- ``split``: test metrics under the other split conventions (``data.split.mode`` = ``window``: STAEformer/LargeST,
  ``ratio_lookback``: TSLib), for runs trained on the release's ``ratio`` split;
- ``selection`` (no evaluation): the test metrics of the test-selected epoch (the release's ``best_test_model``)
  against those of the validation-selected one, from the ``test_curve/*`` logged with ``callbacks.test_every_epoch``.

The scaler is not varied: the model was trained on inputs scaled one way, so re-scaling them at test time measures
a distribution shift, not the protocol; the results say so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from stm3_lightning.metrics.per_batch import global_metrics, per_batch_metrics
from stm3_lightning.run.evaluation import load_for_eval
from stm3_lightning.run.results import atomic_write_text
from stm3_lightning.run.seeded_eval import EvalPass, eval_seed, evaluate_loader

CHECKS: tuple[str, ...] = ("eval_seeds", "router_noise", "split")
SPLIT_VARIANTS: tuple[str, ...] = ("window", "ratio_lookback")
SCALER_NOTE = (
    "not measured: the scaler is part of training (the model learned on inputs scaled one way), so it can only "
    "be varied by retraining"
)


def checkpoint_key(ckpt: Path) -> dict[str, object]:
    """What identifies a checkpoint's content for the cache: file name, size and modification time."""
    stat = ckpt.stat()
    return {"checkpoint": ckpt.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cached(run_dir: Path, name: str, key: dict[str, Any], compute: Callable[[], dict]) -> dict:
    """``<run_dir>/protocol/<name>.json`` when it was computed for ``key``; else ``compute()``, saved there."""
    path = run_dir / "protocol" / f"{name}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["value"]
    value = compute()
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, json.dumps({"key": key, "value": value}, indent=2, sort_keys=True))
    return value


class CheckpointScorer:
    """Scores one checkpoint's test split under config overrides; each variant's data and model load once and
    each (seed, overrides) pass runs once (later requests reuse its metrics)."""

    def __init__(self, ckpt: Path) -> None:
        self.ckpt = ckpt
        self._loaded: dict[tuple[str, ...], tuple] = {}
        self._scored: dict[tuple[int, tuple[str, ...]], EvalPass] = {}

    def _load(self, overrides: tuple[str, ...]) -> tuple:
        if overrides not in self._loaded:
            self._loaded[overrides] = load_for_eval(self.ckpt, list(overrides))
        return self._loaded[overrides]

    def config(self, overrides: tuple[str, ...] = ()) -> DictConfig:
        return self._load(overrides)[0]

    def score(self, seed: int | None = None, overrides: tuple[str, ...] = (), keep: bool = False) -> EvalPass:
        """The test pass at ``seed`` (default: the run's ``eval_seed``) under ``overrides``; ``keep`` returns the
        predictions too (never memoised: they can be large)."""
        cfg, module, dm = self._load(overrides)
        seed = eval_seed(cfg) if seed is None else seed
        key = (seed, overrides)
        if keep or key not in self._scored:
            scored = evaluate_loader(module, dm.test_dataloader(), seed, cfg.trainer.limit_test_batches, keep)
            self._scored[key] = EvalPass(scored.metrics, scored.per_step)
            return scored
        return self._scored[key]

    def windows(self, overrides: tuple[str, ...] = ()) -> int:
        return int(self._load(overrides)[2].window_counts.get("test", 0))


def test_check(scorer: CheckpointScorer) -> dict:
    """Test metrics at the run's eval seed, and the release's per-batch averaging of the same predictions."""
    cfg = scorer.config()
    scored = scorer.score(keep=True)
    assert scored.pred is not None and scored.true is not None
    return {
        "eval_seed": eval_seed(cfg),
        "windows": scorer.windows(),
        "metrics": scored.metrics,
        "per_step": scored.per_step,
        "release_per_batch": per_batch_metrics(scored.pred, scored.true, int(cfg.data.eval_batch_size)),
        "global": global_metrics(scored.pred, scored.true, float(cfg.metrics.mape_eps)),
    }


def spread(values: list[float]) -> dict[str, float]:
    """min, max, population std and max - min of ``values``."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {"min": min(values), "max": max(values), "std": std, "range": max(values) - min(values)}


def eval_seeds_check(scorer: CheckpointScorer, n: int) -> dict:
    """Test MAE at ``eval_seed = 0 .. n-1``."""
    mae = [scorer.score(seed=s).metrics["mae"] for s in range(n)]
    return {"eval_seeds": list(range(n)), "mae": mae, **spread(mae)}


def router_noise_check(scorer: CheckpointScorer) -> dict:
    """Test MAE/RMSE with the release's eval-time router noise on (the run's eval seed) and off."""
    cfg = scorer.config()
    if "router_noise_at_eval" not in cfg.model or not cfg.model.router_noise_at_eval:
        return {"status": f"not applicable: model {cfg.model.name} draws no router noise at evaluation"}
    on = scorer.score().metrics
    off = scorer.score(overrides=("model.router_noise_at_eval=false",)).metrics
    return {
        "noise_on": {k: on[k] for k in ("mae", "rmse", "mape")},
        "noise_off": {k: off[k] for k in ("mae", "rmse", "mape")},
        "delta_mae": off["mae"] - on["mae"],
    }


def split_check(scorer: CheckpointScorer) -> dict:
    """Test metrics of the checkpoint when the test windows are cut by the other split conventions."""
    cfg = scorer.config()
    if cfg.data.split.mode != "ratio":
        return {"status": f"not applicable: the run uses data.split.mode={cfg.data.split.mode}, not ratio"}
    out: dict[str, dict] = {"ratio": {"windows": scorer.windows(), **_core(scorer.score().metrics)}}
    for mode in SPLIT_VARIANTS:
        overrides = (f"data.split.mode={mode}",)
        out[mode] = {"windows": scorer.windows(overrides), **_core(scorer.score(overrides=overrides).metrics)}
    return out


def _core(metrics: dict[str, float]) -> dict[str, float]:
    return {k: metrics[k] for k in ("mae", "rmse", "mape")}


def selection_check(curves: dict[str, list]) -> dict:
    """Test metrics of the epoch with the lowest validation MAE vs the epoch with the lowest *test* MAE.

    ``curves``: ``epoch`` (1-based), ``val_mae`` and ``test_mae``/``test_rmse`` lists (``None`` where a metric was
    not logged). With the test curve at every validated epoch the comparison is complete; when it covers only some
    epochs (e.g. a run continued with ``callbacks.test_every_epoch=true``) but the validation-selected one, the
    test-selected epoch is the best of the covered ones (``coverage`` says how many), so ``delta_mae`` is then a
    bound on the gap (the true test-selected epoch can only be better).
    """
    epochs, val, test = curves.get("epoch", []), curves.get("val_mae", []), curves.get("test_mae", [])
    covered = [i for i, v in enumerate(test) if v is not None]
    by_val = min(range(len(epochs)), key=lambda i: val[i]) if epochs else None
    if by_val is None or by_val not in covered:
        return {
            "status": f"not recorded: the test curve covers {len(covered)} of {len(epochs)} epochs, not the "
            "validation-selected one (train with callbacks.test_every_epoch=true, the stm3 reproduce default)"
        }
    by_test = min(covered, key=lambda i: test[i])
    rmse = curves.get("test_rmse", [None] * len(epochs))
    out = {
        "val_selected": {"epoch": epochs[by_val], "test_mae": test[by_val], "test_rmse": rmse[by_val]},
        "test_selected": {"epoch": epochs[by_test], "test_mae": test[by_test], "test_rmse": rmse[by_test]},
        "delta_mae": test[by_test] - test[by_val],
    }
    if len(covered) < len(epochs):
        out["coverage"] = (
            f"test curve at {len(covered)} of {len(epochs)} epochs (epochs {epochs[covered[0]]}-{epochs[covered[-1]]})"
        )
    return out


def run_checks(run_dir: Path, ckpt: Path, checks: tuple[str, ...], n_eval_seeds: int) -> dict[str, dict]:
    """The requested evaluation checks of one run's checkpoint (``test`` always), each cached in the run folder."""
    scorer = CheckpointScorer(ckpt)
    base = checkpoint_key(ckpt)
    todo: dict[str, tuple[dict, Callable[[], dict]]] = {"test": ({}, lambda: test_check(scorer))}
    if "eval_seeds" in checks and n_eval_seeds > 0:
        todo["eval_seeds"] = ({"n": n_eval_seeds}, lambda: eval_seeds_check(scorer, n_eval_seeds))
    if "router_noise" in checks:
        todo["router_noise"] = ({}, lambda: router_noise_check(scorer))
    if "split" in checks:
        todo["split"] = ({"variants": list(SPLIT_VARIANTS)}, lambda: split_check(scorer))
    return {name: cached(run_dir, name, {**base, **extra}, fn) for name, (extra, fn) in todo.items()}
