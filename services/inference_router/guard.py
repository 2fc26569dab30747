"""The PII guard: what must not leave for an external provider.

Findings name the kind and count, never the value, so recording them cannot leak what was
found. Card numbers must pass the Luhn check, so order ids and timestamps are not taken for
cards.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_Validator = Callable[[str], bool]


def luhn(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_DETECTORS: tuple[tuple[str, re.Pattern[str], _Validator | None], ...] = (
    ("secret", re.compile(
        r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}"
        r"|xox[abpr]-[A-Za-z0-9-]{10,}|ak_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}"
        r"|vk_[0-9a-f]{8}_[A-Za-z0-9_-]{20,})"), None),
    ("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), None),
    ("card_number", re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), luhn),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b"), None),
    ("national_id", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), None),
    ("phone", re.compile(r"(?<![\w+])\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}\b"
                         r"|(?<![\w(])\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b"), None),
)


@dataclass
class Findings:
    counts: Counter[str] = field(default_factory=Counter)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def kinds(self) -> list[str]:
        return sorted(self.counts)

    def summary(self) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))


def scan(text: str, findings: Findings, *, redact: bool) -> str:
    """Count what ``text`` holds; with ``redact``, return it with each finding masked."""
    for kind, pattern, valid in _DETECTORS:
        def replace(match: re.Match[str], kind: str = kind, valid: _Validator | None = valid) -> str:
            if valid is not None and not valid(match.group(0)):
                return match.group(0)
            findings.counts[kind] += 1
            return f"[{kind.upper()}]" if redact else match.group(0)
        text = pattern.sub(replace, text)
    return text


def guard_messages(body: dict[str, Any], *, redact: bool) -> Findings:
    """Scan (and redact in place) every text a chat, messages or embeddings body sends."""
    findings = Findings()
    for container, key in _texts(body):
        container[key] = scan(container[key], findings, redact=redact)
    return findings


def _texts(body: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(container, key) of each string the request sends, so it can be replaced in place."""
    found: list[tuple[Any, Any]] = []
    system = body.get("system")
    if isinstance(system, str):
        found.append((body, "system"))
    elif isinstance(system, list):
        found += _parts(system)
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        if isinstance(message.get("content"), str):
            found.append((message, "content"))
        elif isinstance(message.get("content"), list):
            found += _parts(message["content"])
    inputs = body.get("input")
    if isinstance(inputs, str):
        found.append((body, "input"))
    elif isinstance(inputs, list):
        found += [(inputs, i) for i, item in enumerate(inputs) if isinstance(item, str)]
    return found


def _parts(parts: list[Any]) -> list[tuple[Any, Any]]:
    return [(p, "text") for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
