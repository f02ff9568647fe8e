"""The base class of the state and input enums that key the cores' state tables."""

from __future__ import annotations

from enum import Enum


class TableEnum(Enum):
    """An Enum hashed by identity. The state tables are looked up with a (state, input)
    key on every cell and every data frame, and Enum's own `__hash__` is Python code
    (it hashes the member's name); members are singletons compared by identity, so the
    identity hash is equally correct and runs in C."""

    __hash__ = object.__hash__
