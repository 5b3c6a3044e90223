"""String-valued choices of the configuration (``router: node``, ``kernel_backend: auto``, ...)."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

T = TypeVar("T", bound="Choice")


class Choice(str, Enum):
    """A config choice: its members are strings that compare equal to, print as and format as their value.

    Subclasses list their spellings as members; ``_missing_`` may map aliases onto them.
    """

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str(self), spec)

    @classmethod
    def names(cls) -> str:
        """The accepted values, comma-separated (for messages)."""
        return ", ".join(member.value for member in cls)

    @classmethod
    def parse(cls: type[T], key: str, value: object) -> T:
        """``value`` as a member of ``cls``; a one-sentence ``ValueError`` naming ``key`` otherwise.

        YAML reads ``on``/``off``/``no`` as booleans; those get a message saying so unless ``cls`` takes them.
        """
        try:
            return cls(value)
        except ValueError:
            pass
        if isinstance(value, bool) or value in ("True", "False"):
            raise ValueError(
                f"{key}={value} was read as a boolean (YAML turns on/off/no into booleans); "
                f"write one of {cls.names()}."
            ) from None
        raise ValueError(f"Invalid {key}={value!r}; choose one of {cls.names()}.") from None
