"""Job states and the transitions events cause. Pure rules, unit-tested directly."""

from __future__ import annotations

from typing import Final

TERMINAL: Final = frozenset({"completed", "failed", "terminated", "rejected"})

_ORDER: Final = {
    "requested": 0, "queued": 1, "admitted": 2, "rejected": 2, "provisioning": 3, "running": 4,
    "completed": 5, "failed": 5, "terminated": 5,
}


def next_status(current: str, incoming: str) -> str:
    """Events can arrive out of order: a state never moves backwards, and terminal is final."""
    if current in TERMINAL:
        return current
    return incoming if _ORDER[incoming] >= _ORDER[current] else current
