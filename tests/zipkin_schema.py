"""Validation of exported spans against the Zipkin v2 ``Span`` schema.

The project carries its own schema, written from the facts of the Zipkin v2
API (openzipkin/zipkin-api ``zipkin2-api.yaml``): field names and types, id
patterns, the ``kind`` enum, ``duration >= 1``.  When the official file is
present beside the project (``../shared/specs/zipkin2-api.yaml``), spans are
validated against it too.
"""

from __future__ import annotations

import pathlib
import typing

import jsonschema

ENDPOINT = {
    "type": "object",
    "properties": {
        "serviceName": {"type": "string"},
        "ipv4": {"type": "string", "format": "ipv4"},
        "ipv6": {"type": "string", "format": "ipv6"},
        "port": {"type": "integer"},
    },
}

SPAN = {
    "type": "object",
    "required": ["traceId", "id"],
    "properties": {
        "traceId": {
            "type": "string",
            "minLength": 16,
            "maxLength": 32,
            "pattern": "^[a-f0-9]{16,32}$",
        },
        "id": {
            "type": "string",
            "minLength": 16,
            "maxLength": 16,
            "pattern": "^[a-f0-9]{16}$",
        },
        "parentId": {
            "type": "string",
            "minLength": 16,
            "maxLength": 16,
            "pattern": "^[a-f0-9]{16}$",
        },
        "name": {"type": "string"},
        "kind": {
            "type": "string",
            "enum": ["CLIENT", "SERVER", "PRODUCER", "CONSUMER"],
        },
        "timestamp": {"type": "integer"},
        "duration": {"type": "integer", "minimum": 1},
        "debug": {"type": "boolean"},
        "shared": {"type": "boolean"},
        "localEndpoint": ENDPOINT,
        "remoteEndpoint": ENDPOINT,
        "annotations": {
            "type": "array",
            "uniqueItems": True,
            "items": {
                "type": "object",
                "required": ["timestamp", "value"],
                "properties": {
                    "timestamp": {"type": "integer"},
                    "value": {"type": "string"},
                },
            },
        },
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

OFFICIAL = (
    pathlib.Path(__file__).resolve().parents[2]
    / "shared"
    / "specs"
    / "zipkin2-api.yaml"
)


def _validators() -> list[jsonschema.protocols.Validator]:
    checker = jsonschema.FormatChecker()
    validators = [jsonschema.Draft7Validator(SPAN, format_checker=checker)]
    if OFFICIAL.exists():
        import yaml

        spec = yaml.safe_load(OFFICIAL.read_text())
        schema = {"$ref": "#/definitions/Span", "definitions": spec["definitions"]}
        validators.append(jsonschema.Draft4Validator(schema, format_checker=checker))
    return validators


VALIDATORS = _validators()


def validate_span(span: dict[str, typing.Any]) -> None:
    """Raise :class:`jsonschema.ValidationError` unless *span* is valid Zipkin v2."""
    for validator in VALIDATORS:
        validator.validate(span)


def validate_spans(spans: typing.Iterable[dict[str, typing.Any]]) -> None:
    """Validate every span of *spans*."""
    for span in spans:
        validate_span(span)
