"""``stm3 baselines``: the baselines' test metrics under both protocols at 12->12 and 96->96 (README table).

Each (model, setting, protocol) is one ordinary training run (parameter-free models only test), written under
``<root>/<model>_<L>_<H>_<protocol>/``; the table is printed as Markdown and saved as JSON next to the runs.
Seasonal naive needs a full day of input, so it runs with ``input_len = steps_per_day`` and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from stm3_lightning.config.compose import compose

SETTINGS: tuple[tuple[int, int], ...] = ((12, 12), (96, 96))
MODELS: tuple[str, ...] = ("persistence", "seasonal_naive", "linear")
PROTOCOLS: tuple[str, ...] = ("official", "masked")


def run_one(model: str, input_len: int, horizon: int, protocol: str, root: Path, extra: list[str]) -> dict:
    """Train/test one baseline (reusing a finished run dir) and return its ``test_metrics.json`` content."""
    from stm3_lightning.run.train import train

    run_dir = root / f"{model}_{input_len}_{horizon}_{protocol}"
    metrics = run_dir / "test_metrics.json"
    if not metrics.is_file():
        cfg = compose(
            [
                f"model={model}",
                f"data.input_len={input_len}",
                f"data.horizon={horizon}",
                f"metrics.protocol={protocol}",
                f"paths.output_dir={run_dir}",
                *extra,
            ]
        )
        train(cfg)
    return json.loads(metrics.read_text())


def markdown_table(rows: list[dict]) -> str:
    """Rows of ``{model, setting, protocol, mae, rmse, mape}`` -> Markdown (MAPE in %)."""
    lines = ["| model | setting | protocol | MAE | RMSE | MAPE (%) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['setting']} | {r['protocol']} | {r['mae']:.2f} | {r['rmse']:.2f} | {100 * r['mape']:.2f} |"
        )
    return "\n".join(lines)


def baselines_table(args: list[str]) -> str:
    """Run every baseline (``args``: extra overrides, default ``data=pems08``) and return the Markdown table."""
    extra = list(args) if any(a.startswith("data=") for a in args) else ["data=pems08", *args]
    probe = compose(["model=persistence", *extra])
    root = Path(probe.paths.root_dir) / "baselines" / probe.data.name
    rows = []
    for input_len, horizon in SETTINGS:
        for model in MODELS:
            length = max(input_len, probe.data.steps_per_day) if model == "seasonal_naive" else input_len
            for protocol in PROTOCOLS:
                result = run_one(model, length, horizon, protocol, root, extra)
                rows.append(
                    {
                        "model": model,
                        "setting": f"{length}->{horizon}",
                        "protocol": protocol,
                        **{k: result["overall"][k] for k in ("mae", "rmse", "mape")},
                    }
                )
    (root / "baselines.json").write_text(json.dumps(rows, indent=2))
    return markdown_table(rows)
