from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from stm3_lightning.plots import (
    figure_image,
    plot_assignment_map,
    plot_error_bars,
    plot_expert_load,
    plot_histories,
    plot_horizon_mae,
    plot_routing_history,
    plot_similarity_heatmap,
    save_figure,
)

_GEN = torch.Generator().manual_seed(0)
_ASSIGN = torch.randint(4, (170,), generator=_GEN)
_COORDS = torch.randn(170, 2, generator=_GEN)
_STEPS = np.arange(1, 13)
_CURVE = (_STEPS, np.linspace(10.0, 20.0, 12), np.full(12, 0.5))
_BUILDERS: dict[str, Callable[[], Figure]] = {
    "assign_grid": lambda: plot_assignment_map(torch.stack([_ASSIGN, _ASSIGN.roll(3)]), num_experts=4),
    "assign_scatter": lambda: plot_assignment_map(_ASSIGN, 4, coords=_COORDS),
    "load": lambda: plot_expert_load(torch.tensor([10.0, 30.0, 0.0, 5.0])),
    "heatmap": lambda: plot_similarity_heatmap(torch.tensor([[1.0, 0.2], [0.2, float("nan")]])),
    "history": lambda: plot_routing_history(
        {"routing/flip_rate": [0.3, 0.1, 0.0], "routing/tv": [0.2, 0.05, 0.01]}, epochs=[1, 2, 3]
    ),
    "bars": lambda: plot_error_bars(
        {g: {"mae": SimpleNamespace(mean=m, std=0.3)} for g, m in (("full", 14.0), ("no_agccn", 15.5))},
        [("mae", "MAE", 1.0)],
        "bars",
    ),
    "report_horizon": lambda: plot_horizon_mae(
        {"full": _CURVE, "stm2": (_STEPS, _CURVE[1] + 1.0, None)}, "h"
    ),
    "histories": lambda: plot_histories(
        {"routing/tv": {"full": _CURVE}, "disent/cka": {"full": _CURVE}}, "h"
    ),
}


@pytest.mark.parametrize("name", sorted(_BUILDERS))
def test_plots_write_non_trivial_pngs(name: str, tmp_path: Path) -> None:
    path = save_figure(_BUILDERS[name](), tmp_path / "sub" / f"{name}.png")
    assert path.is_file() and path.stat().st_size > 5_000
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert len({tuple(px) for px in image[::7, ::7, :3].reshape(-1, 3).tolist()}) > 10


def test_plot_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="assign must be"):
        plot_assignment_map(torch.zeros(2, 5, dtype=torch.long), 2, coords=torch.zeros(5, 2))
    with pytest.raises(ValueError, match="square"):
        plot_similarity_heatmap(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same length"):
        plot_routing_history({"a": [1.0, 2.0], "b": [1.0]})


def test_figure_image_renders_at_the_requested_size() -> None:
    fig = Figure(figsize=(4, 3))
    fig.add_subplot().plot([0, 1], [1, 0])
    assert figure_image(fig, dpi=50).size == (200, 150)
