"""The router's OpenAPI document (served at /openapi.json; the test suite fuzzes against it)."""

from __future__ import annotations

from typing import Any

_MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"type": "string", "enum": ["system", "user", "assistant"]},
    "content": {"type": "string", "maxLength": 2000}}}
_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
_ANTHROPIC_ERROR = {"type": "object", "required": ["type", "error"], "properties": {
    "type": {"const": "error"}, "error": {"type": "object", "required": ["type", "message"]}}}


def _errors(schema: dict[str, Any], *codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": schema}}}
            for c in codes}


def _post(summary: str, body: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"200": {"description": "the answer (JSON, or SSE when stream is true)",
                              "content": {"application/json": {"schema": {"type": "object"}},
                                          "text/event-stream": {"schema": {
                                              "type": "object", "required": ["data"],
                                              "properties": {"event": {"type": "string"},
                                                             "data": {"type": "string"}}}}}},
                      **_errors(error, 400, 401, 402, 403, 404, 413, 429, 502, 503, 504)}}}


def spec(models: list[str] | None = None) -> dict[str, Any]:
    """``models``: the aliases served now, so generated requests can reach the upstreams."""
    model: dict[str, Any] = {"type": "string", "maxLength": 100}
    if models:
        model["enum"] = models
    chat = {"type": "object", "required": ["model", "messages"], "properties": {
        "model": model,
        "messages": {"type": "array", "items": _MESSAGE, "minItems": 1, "maxItems": 8},
        "max_tokens": {"type": "integer"}, "temperature": {"type": "number"},
        "stream": {"type": "boolean"}, "user": {"type": "string", "maxLength": 64}}}
    messages = {"type": "object", "required": ["model", "messages", "max_tokens"], "properties": {
        "model": model, "system": {"type": "string"},
        "messages": {"type": "array", "items": _MESSAGE, "minItems": 1, "maxItems": 8},
        "max_tokens": {"type": "integer"}, "stream": {"type": "boolean"}}}
    embeddings = {"type": "object", "required": ["model", "input"], "properties": {
        "model": model,
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}}}
    predict = {"type": "object", "required": ["model", "instances"], "properties": {
        "model": model,
        "instances": {"type": "array", "items": {"type": "object"}, "minItems": 1, "maxItems": 64}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "aicloud inference router", "version": "1.0.0",
                 "description": "OpenAI-compatible gateway; Anthropic Messages on /v1/messages."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/chat/completions": _post("Chat completion (OpenAI format)", chat, _ERROR),
            "/v1/messages": _post("Message (Anthropic format)", messages, _ANTHROPIC_ERROR),
            "/v1/embeddings": _post("Embeddings (OpenAI format)", embeddings, _ERROR),
            "/v1/predict": _post("Predictions from a platform tabular-model endpoint", predict, _ERROR),
            "/v1/models": {"get": {"summary": "Models the caller's key may use",
                                   "security": [{"bearer": []}],
                                   "responses": {"200": {"description": "the list", "content": {
                                       "application/json": {"schema": {"type": "object"}}}},
                                       **_errors(_ERROR, 401)}}},
        },
    }
