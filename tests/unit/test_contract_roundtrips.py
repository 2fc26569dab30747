"""Every contract survives the wire: messages drawn by Hypothesis from each contract's own JSON
schema, encoded as the bus encodes them, decode to the same message through both readers a
subscriber uses; a field from a newer producer is ignored, as the envelope says
(``extra="ignore"``), and the message is otherwise the same.

``schema_strategy`` covers the JSON schema keywords pydantic writes for these contracts (a test
below fails on any other, so a new kind of field cannot slip through undrawn)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts import MESSAGES
from contracts.envelope import Envelope
from services.kit.decode import catalogue_decoder, json_reader, typed_reader

pytestmark = pytest.mark.unit
IGNORED = {"title", "description", "default"}
KNOWN = IGNORED | {"$defs", "$ref", "additionalProperties", "anyOf", "enum", "exclusiveMinimum", "format",
                   "items", "maxItems", "maxLength", "maxProperties", "maximum", "minItems", "minLength",
                   "minimum", "pattern", "patternProperties", "properties", "required", "type"}


def schema_strategy(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    unknown = set(schema) - KNOWN
    if unknown:
        raise NotImplementedError(f"no strategy for JSON schema keywords {sorted(unknown)}")
    if "$ref" in schema:
        return st.deferred(lambda: schema_strategy(defs[schema["$ref"].rsplit("/", 1)[1]], defs))
    if "anyOf" in schema:
        return st.one_of(*(schema_strategy(s, defs) for s in schema["anyOf"]))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -(2**40) - 1) + 1)
        return st.integers(min_value=low, max_value=schema.get("maximum", 2**40))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum", schema.get("exclusiveMinimum")),
                         max_value=schema.get("maximum"), allow_nan=False, allow_infinity=False,
                         exclude_min="exclusiveMinimum" in schema)
    if kind == "string":
        if schema.get("format") == "uuid":
            return st.uuids().map(str)
        if schema.get("format") == "date-time":
            return st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
        size = {"min_size": schema.get("minLength", 0), "max_size": min(schema.get("maxLength", 40), 40)}
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: size["min_size"] <= len(s) <= schema.get("maxLength", 10**9))
        return st.text(**size)
    if kind == "array":
        return st.lists(schema_strategy(schema.get("items", {"type": "string"}), defs),
                        min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 4), 4))
    if kind == "object":
        if "properties" not in schema:
            values = schema.get("additionalProperties", {"type": "string"})
            keys: st.SearchStrategy[str] = st.text(max_size=12)
            if patterns := schema.get("patternProperties"):
                (pattern, values), = patterns.items()
                keys = st.from_regex(pattern, fullmatch=True)
            return st.dictionaries(keys, schema_strategy(values, defs),
                                   max_size=min(schema.get("maxProperties", 3), 3))
        required = set(schema.get("required", ()))
        fields = {name: schema_strategy(s, defs) for name, s in schema["properties"].items()}
        return st.fixed_dictionaries({k: v for k, v in fields.items() if k in required},
                                     optional={k: v for k, v in fields.items() if k not in required})
    raise NotImplementedError(f"no strategy for {schema}")


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.SUBJECT)
def test_every_contract_round_trips_through_the_bus_encoding(message: type[Envelope]) -> None:
    schema = message.model_json_schema(mode="validation")

    @settings(max_examples=20, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(candidate=schema_strategy(schema, schema.get("$defs", {})),
           future=st.one_of(st.integers(), st.text(max_size=20), st.none()))
    def round_trip(candidate: dict[str, Any], future: Any) -> None:
        try:
            event = message.model_validate(candidate)
        except ValidationError:  # what a JSON schema cannot say (a model validator): not a message
            assume(False)
            raise
        wire = event.model_dump_json().encode()
        assert typed_reader(message)(message.SUBJECT, wire) == event
        assert json_reader(catalogue_decoder)(message.SUBJECT, wire) == event
        newer = {**json.loads(wire), "field_from_a_newer_producer": future}
        assert typed_reader(message)(message.SUBJECT, json.dumps(newer).encode()) == event

    round_trip()


def test_the_strategy_refuses_a_keyword_it_does_not_draw() -> None:
    with pytest.raises(NotImplementedError, match="uniqueItems"):
        schema_strategy({"type": "array", "uniqueItems": True}, {})
