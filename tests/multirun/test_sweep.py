"""The sweep grammar: only top-level commas split values; the grid is the product, first key slowest."""

from __future__ import annotations

import pytest

from stm3_lightning.config.compose import ConfigError
from stm3_lightning.multirun.sweep import parse_sweep, split_values


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("1,2,3", ["1", "2", "3"]),
        ("[1,3,5]", ["[1,3,5]"]),
        ("[1],[1,3]", ["[1]", "[1,3]"]),
        ("[[1,2],[3]],[4]", ["[[1,2],[3]]", "[4]"]),
        ("{a: 1, b: 2},{a: 3}", ["{a: 1, b: 2}", "{a: 3}"]),
        ("'a,b'", ["'a,b'"]),
        ('"a,b",c', ['"a,b"', "c"]),
        ("x", ["x"]),
        ("", [""]),
        ("[1,2", ["[1,2"]),
    ],
)
def test_split_values_splits_top_level_commas_only(value: str, parts: list[str]) -> None:
    assert split_values(value) == parts


def test_grid_is_the_product_in_command_line_order() -> None:
    sweep = parse_sweep(["seed=1,2,3", "model.contrastive=released,repaired", "model.scales=[1,3,5]"])
    assert sweep.swept == ("seed", "model.contrastive")
    combos = sweep.combinations()
    assert len(combos) == 6
    assert combos[0] == {"seed": "1", "model.contrastive": "released", "model.scales": "[1,3,5]"}
    assert [(c["seed"], c["model.contrastive"]) for c in combos[:3]] == [
        ("1", "released"),
        ("1", "repaired"),
        ("2", "released"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["seed=1,2", "seed=3"], "seed is given twice"),
        (["seed=1,,2"], "has an empty value"),
        (["seed=1,"], "has an empty value"),
        (["seed"], "not of the form key=value"),
    ],
)
def test_sweep_errors_are_one_sentence(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_sweep(args)
