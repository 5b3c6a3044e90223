"""README statements that name numbers of the code: they must agree with the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

from stm3_lightning.config.schema import MetricsConfig
from stm3_lightning.metrics import forecasting

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_mape_epsilon_is_documented_with_its_default() -> None:
    eps = f"{MetricsConfig().mape_eps:.0e}".replace("e-0", "e-")  # 1e-3
    row = next(line for line in README.splitlines() if line.startswith("| `metrics.mape_eps`"))
    assert f"`{eps}`" in row and "y + ε" in row
    assert f"default ``{eps}``" in forecasting.__doc__ and "metrics.mape_eps" in forecasting.__doc__


def test_release_conversion_claim_is_what_is_measured() -> None:
    """Converted release weights agree to 1e-5, not bit for bit (tests/models/stm3/test_convert.py measures it)."""
    section = README[README.index("## STM3: faithful by default") :]
    claim = section[: section.index("| key |")]
    assert "bit-identical" not in claim
    assert re.search(r"within 1e-5", claim) and "2.4e-6 to 4.8e-6" in claim


def test_test_metrics_fields_are_documented() -> None:
    row = next(line for line in README.splitlines() if line.startswith("| `test_metrics.json`"))
    assert "`scored_windows`" in row and "trainer.limit_test_batches" in row
