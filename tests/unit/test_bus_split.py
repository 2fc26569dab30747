"""The bus's pieces that need no server: subscription types and the one max-deliver rule."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from services.kit.bus import Bus, Delivery
from services.kit.settle import Redelivery
from services.kit.subscription import BatchSubscription, MessageSubscription

pytestmark = pytest.mark.unit
KIT = Path(__file__).resolve().parents[2] / "services" / "kit"


async def one(event: Any, delivery: Delivery) -> None:
    """A per-message handler (never called here)."""


async def many(events: list[Any]) -> dict[int, str]:
    """A batch handler (never called here)."""
    return {}


def test_a_batch_subscription_is_its_own_type_with_no_per_message_handler() -> None:
    bus = Bus(nats_url="nats://127.0.0.1:4222", service="unit")
    batch = bus.subscribe_batch("aicloud.jobs.>", many, message_type=None, fetch=50)
    single = bus.subscribe("aicloud.jobs.>", one, durable="single")
    assert isinstance(batch, BatchSubscription) and not isinstance(batch, MessageSubscription)
    assert batch.process_batch is many and not hasattr(batch, "process")
    assert single.process is one and not hasattr(single, "process_batch")
    assert (batch.durable, batch.fetch) == ("unit--aicloud_jobs_all", 50)
    assert bus._subscriptions == [batch, single]


def test_a_message_gets_max_deliver_tries_then_is_dead_lettered() -> None:
    redelivery = Redelivery(max_deliver=3, backoff_s=(0.5, 2.0))
    # after a handler failure on delivery n, n tries are spent: the third failure is the last
    assert [redelivery.spent(n) for n in (1, 2, 3)] == [False, False, True]
    # before the handler, the n - 1 earlier deliveries are the tries spent: the fourth
    # delivery (after a crash in the handler) is given up without a fourth try
    assert [redelivery.spent(n - 1) for n in (3, 4)] == [False, True]
    assert [redelivery.delay_s(n) for n in (1, 2, 3)] == [0.5, 2.0, 2.0]


def test_the_max_deliver_check_lives_in_exactly_one_place() -> None:
    checks = []
    for path in sorted(KIT.glob("*.py")):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Compare) and "max_deliver" in ast.unparse(node):
                    checks.append(f"{path.name}:{func.name}")
    assert checks == ["settle.py:spent"]
