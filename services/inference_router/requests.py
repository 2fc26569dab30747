"""Reading what a caller sent: the body checked field by field, with OpenAI-style errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from services.inference_router.wire import Format

Operation = Literal["chat", "embeddings", "predict"]
MAX_USER_CHARS = 256  # InferenceCompleted.user's limit


class ApiError(Exception):
    """An error answered to the caller, in the caller's wire format."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.param, self.headers = param, headers or {}

    def body(self, client: Format) -> bytes:
        if client == "anthropic":
            kind = {400: "invalid_request_error", 401: "authentication_error",
                    402: "billing_error", 403: "permission_error", 404: "not_found_error",
                    413: "request_too_large", 429: "rate_limit_error"}.get(self.status, "api_error")
            return orjson.dumps({"type": "error", "error": {"type": kind, "message": self.message}})
        return orjson.dumps({"error": {"message": self.message, "type": self.type,
                                       "param": self.param, "code": self.code}})


@dataclass
class Call:
    operation: Operation
    client: Format
    alias: str
    body: dict[str, Any]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    user: str | None
    conversation: str | None
    request_id: str

    def prompt_text(self) -> str:
        parts: list[str] = []
        system = self.body.get("system")
        if system:
            parts.append(system if isinstance(system, str) else orjson.dumps(system).decode())
        for message in self.body.get("messages") or []:
            content = message.get("content")
            parts.append(content if isinstance(content, str) else orjson.dumps(content).decode())
        inputs = self.body.get("input")
        if inputs is not None:
            parts.append(inputs if isinstance(inputs, str) else orjson.dumps(inputs).decode())
        return "\n".join(parts)


def parse_call(raw: bytes, *, operation: Operation, client: Format, request_id: str,
               headers: dict[str, str], max_tokens_cap: int) -> Call:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc}); send a JSON object "
                       "like {\"model\": ..., \"messages\": [...]}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    alias = body.get("model")
    if not isinstance(alias, str) or not alias or len(alias) > 256:
        raise ApiError(400, "'model' is required: the name of a model from GET /v1/models",
                       param="model", code="missing_model")
    if operation == "chat":
        _check_messages(body.get("messages"), client)
    elif operation == "embeddings":
        _check_input(body.get("input"))
    elif not isinstance(body.get("instances"), list) or not body["instances"]:
        raise ApiError(400, "'instances' must be a non-empty list: the inputs to predict on",
                       param="instances")
    max_tokens = _max_tokens(body, client, max_tokens_cap)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    options = body.get("stream_options")
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return Call(operation, client, alias, body, stream, include_usage, max_tokens, _user(body, headers),
                headers.get("x-conversation-id"), request_id)


def _user(body: dict[str, Any], headers: dict[str, str]) -> str | None:
    """The end user the call is for. It travels on the usage event and into the ledger, so it is
    checked here: a user the event or the ledger would refuse was a 500 after the upstream had
    answered (and a call nobody was billed for)."""
    metadata = body.get("metadata")
    given = body.get("user") or (metadata.get("user_id") if isinstance(metadata, dict) else None)
    user = str(given) if given else headers.get("x-aicloud-user")
    if user is not None and (len(user) > MAX_USER_CHARS or "\x00" in user):
        raise ApiError(400, f"'user' must be at most {MAX_USER_CHARS} characters, without NUL;"
                       f" got {len(user)} characters", param="user")
    return user


def _check_messages(messages: Any, client: Format) -> None:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects",
                       param="messages")
    roles = {"system", "developer", "user", "assistant", "tool"} if client == "openai" \
        else {"user", "assistant"}
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in roles:
            raise ApiError(400, f"messages[{i}] needs a 'role' of {', '.join(sorted(roles))}",
                           param=f"messages[{i}].role")
        content = message.get("content")
        if not isinstance(content, str | list) and not (content is None and role in (
                "assistant", "tool")):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of parts",
                           param=f"messages[{i}].content")


def _check_input(inputs: Any) -> None:
    ok = (isinstance(inputs, str) and inputs) or (
        isinstance(inputs, list) and inputs and all(isinstance(i, str | int) for i in inputs))
    if not ok:
        raise ApiError(400, "'input' must be a non-empty string or list of strings", param="input")


def _max_tokens(body: dict[str, Any], client: Format, cap: int) -> int | None:
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    value = body.get(field)
    if value is None:
        if client == "anthropic":
            raise ApiError(400, "'max_tokens' is required by the Messages API", param="max_tokens")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"'{field}' must be a positive integer", param=field)
    if value > cap:
        raise ApiError(400, f"'{field}' is {value}, more than the {cap} this router allows; "
                       "ask for fewer tokens", param=field, code="max_tokens_too_large")
    return value
