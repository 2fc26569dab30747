"""Durations on the command line, the way ``--idle-timeout`` takes them: ``90s``, ``30m``, ``12h``
or bare seconds."""

from __future__ import annotations

import re

from aicloud.output import fail

UNITS = {"s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"([0-9]+)([smh]?)")


def parse_duration(value: str, *, option: str) -> int:
    """Whole seconds in ``value``; anything else ends the command (exit 2) naming ``option``."""
    match = _DURATION.fullmatch(value.strip())
    if match is None or int(match[1]) == 0:
        raise fail(f"{option} {value!r} is not a duration",
                   hint=f"e.g. {option} 90s (or 30m, 12h; a bare number is seconds)", code=2)
    return int(match[1]) * UNITS[match[2] or "s"]
