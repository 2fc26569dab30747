"""A dependency that does not answer (PostgreSQL restarting) is a 503 with Retry-After that a
client may retry, never a 500: the fault suite found job submits answered 500 while PostgreSQL
was restarting."""

from __future__ import annotations

import asyncpg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import DBAPIError

from services.kit.http import create_http_app
from services.kit.metrics import Metrics

pytestmark = pytest.mark.unit


def failing_app(exc: Exception) -> TestClient:
    app = create_http_app(service="test", metrics=Metrics("test"), checks={})

    @app.post("/things")
    async def things() -> None:
        raise exc

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "Connection refused"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    DBAPIError("SELECT 1", {}, ConnectionResetError(), connection_invalidated=True),
], ids=["refused", "starting-up", "connection-lost"])
def test_a_database_that_does_not_answer_is_a_503_to_retry(exc: Exception) -> None:
    answer = failing_app(exc).post("/things")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    assert answer.headers["content-type"] == "application/problem+json"
    assert "not answering" in answer.json()["detail"] and "retry in 2 s" in answer.json()["detail"]


def test_other_errors_stay_500() -> None:
    assert failing_app(RuntimeError("a bug")).post("/things").status_code == 500
    assert failing_app(DBAPIError("SELECT 1", {}, ValueError("bad"))).post("/things").status_code == 500
