"""The summary table that :mod:`benchmarks.train_step` prints: targets, measured times, memory and parity."""

from __future__ import annotations

from benchmarks.common import format_table

TARGET_SPEEDUP, TARGET_EPOCH_S, TARGET_ETTH1_EPOCH_S = 50.0, 480.0, 60.0


# ------------------------------------------------------------------------------------------------ reporting
def summary_rows(result: dict[str, object]) -> list[list[object]]:
    rows: list[list[object]] = []
    small = result["small_batch"]
    for backend in ("torch", "ref"):
        if backend in small:
            t = small[backend]
            rows.append(
                [
                    f"train step, kernel_backend={backend}",
                    small["batch"],
                    t["median_s"],
                    t["min_s"],
                    t["repeats"],
                ]
            )
    big = result["training_batch"]
    if big:
        rows.append(
            [
                "train step, kernel_backend=torch",
                big["batch"],
                big["step"]["median_s"],
                big["step"]["min_s"],
                big["step"]["repeats"],
            ]
        )
        rows.append(
            [
                "data loading (next(loader))",
                big["batch"],
                big["data"]["median_s"],
                big["data"]["min_s"],
                big["data"]["repeats"],
            ]
        )
    etth1 = result.get("etth1")
    if etth1:
        t = etth1["training_batch"]["step"]
        rows.append(["train step, ETTh1 96->96", etth1["training_batch"]["batch"], *timing_cells(t)])
    comp = result.get("compile") or {}
    for label in ("compiled", "eager"):
        if label in comp:
            rows.append([f"train step, compile: {label}", comp["batch"], *timing_cells(comp[label])])
    step16 = (result.get("bf16") or {}).get("step") or {}
    for label in ("bf16", "fp32"):
        if label in step16:
            rows.append([f"train step, autocast: {label}", step16["batch"], *timing_cells(step16[label])])
    return rows


def timing_cells(t: dict[str, object]) -> list[object]:
    """median, min, repeats of a :class:`Timing` dict."""
    return [t["median_s"], t["min_s"], t["repeats"]]


def print_summary(result: dict[str, object]) -> None:
    print()
    print(format_table(summary_rows(result), ["measurement", "batch", "median s", "min s", "repeats"]))
    speedup = result.get("speedup_vs_ref")
    if speedup is not None:
        print(
            f"speedup_vs_ref (batch {result['small_batch']['batch']}): {speedup:.1f}x (target {TARGET_SPEEDUP:.0f}x)"
        )
    print(
        f"epoch_seconds: {result['epoch_seconds']:.0f} s = {result['epoch_seconds'] / 60:.1f} min "
        f"(target {TARGET_EPOCH_S:.0f} s; {result['epoch_basis']})"
    )
    if result.get("etth1_epoch_seconds") is not None:
        print(
            f"etth1_epoch_seconds: {result['etth1_epoch_seconds']:.1f} s (target {TARGET_ETTH1_EPOCH_S:.0f} s; "
            f"{result['etth1']['epoch_basis']})"
        )
    training = (result.get("bf16") or {}).get("training")
    if training:
        print(
            f"bf16-mixed vs fp32 after {training['epochs']} x {training['batches_per_epoch']} steps: test MAE "
            f"{training['runs']['bf16-mixed']['mae']:.4f} vs {training['runs']['32-true']['mae']:.4f} "
            f"({training['mae_rel_diff']:+.2%}), fit time x{training['time_ratio_bf16_vs_fp32']:.2f}"
        )
