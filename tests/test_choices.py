"""String-valued config choices: members read as their values, parse gives one-sentence errors."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from stm3_lightning.choices import Choice


class Colour(Choice):
    red = "red"
    dark_blue = "dark_blue"


def test_members_read_as_their_values() -> None:
    assert (
        Colour.red == "red" and str(Colour.red) == f"{Colour.red}" == "red" and f"{Colour.red:>4}" == " red"
    )
    assert Colour.names() == "red, dark_blue"
    assert OmegaConf.to_yaml(OmegaConf.create({"c": str(Colour.dark_blue)})) == "c: dark_blue\n"


def test_parse() -> None:
    assert Colour.parse("x.colour", "dark_blue") is Colour.dark_blue
    assert Colour.parse("x.colour", Colour.red) is Colour.red
    with pytest.raises(ValueError, match=r"^Invalid x.colour='green'; choose one of red, dark_blue\.$"):
        Colour.parse("x.colour", "green")
    for value in (False, "True"):
        with pytest.raises(
            ValueError, match=r"x.colour=(False|True) was read as a boolean .*write one of red"
        ):
            Colour.parse("x.colour", value)
