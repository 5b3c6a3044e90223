"""The sweep grammar of ``stm3 train -m``: ``key=a,b,c`` gives ``key`` three values; the grid is their product.

Only commas at the top level of a value separate sweep values. Commas inside brackets, braces, parentheses or quotes
belong to the value, so ``model.scales=[1,3,5]`` is one value and ``model.scales=[1],[1,3]`` two; ``'a,b'`` and
``"a,b"`` are one string. A value without a top-level comma is an ordinary override, the same for every job.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from stm3_lightning.config.compose import ConfigError

_OPEN = {"[": "]", "{": "}", "(": ")"}
_QUOTES = ("'", '"')


def split_values(value: str) -> list[str]:
    """``"1,2,3"`` -> ``["1", "2", "3"]``; ``"[1,3],[5]"`` -> ``["[1,3]", "[5]"]``; ``"'a,b'"`` -> ``["'a,b'"]``.

    Unbalanced brackets or quotes leave the rest of the value whole (the config parser then names the error).
    """
    parts: list[str] = []
    closing: list[str] = []
    quote = ""
    start = 0
    for i, char in enumerate(value):
        if quote:
            quote = "" if char == quote else quote
        elif char in _QUOTES:
            quote = char
        elif char in _OPEN:
            closing.append(_OPEN[char])
        elif closing and char == closing[-1]:
            closing.pop()
        elif char == "," and not closing:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


@dataclass(frozen=True)
class Sweep:
    """A parsed ``-m`` command line: every argument in its given order, each with one value or several."""

    keys: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]

    @property
    def swept(self) -> tuple[str, ...]:
        """The keys that take more than one value, in command-line order."""
        return tuple(k for k, v in zip(self.keys, self.values, strict=True) if len(v) > 1)

    def combinations(self) -> list[dict[str, str]]:
        """Every job's ``key -> value``, the product of the values with the first argument varying slowest."""
        return [dict(zip(self.keys, combo, strict=True)) for combo in itertools.product(*self.values)]


def parse_sweep(args: Sequence[str]) -> Sweep:
    """Parse ``key=value[,value...]`` arguments; a key given twice or an empty sweep value fails in one sentence."""
    keys: list[str] = []
    values: list[tuple[str, ...]] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"Argument '{arg}' is not of the form key=value; write e.g. seed=1,2,3.")
        if key in keys:
            raise ConfigError(f"{key} is given twice; give each key once, its values separated by commas.")
        parts = split_values(value)
        if len(parts) > 1 and any(not p.strip() for p in parts):
            raise ConfigError(f"The sweep '{arg}' has an empty value; write its values as {key}=a,b,c.")
        keys.append(key)
        values.append(tuple(parts))
    return Sweep(tuple(keys), tuple(values))
