"""JSON schemas the guided-decoding tests share."""

from __future__ import annotations


def bounded_object(string_field: str, pattern: str) -> dict:
    """An object of one short patterned string and a bounded integer `total`: grammar-constrained
    decoding closes it within the token budget even with random weights (with whitespace off at engine
    level; docs/batch.md "Structured extraction")."""
    return {
        "type": "object",
        "properties": {
            string_field: {"type": "string", "pattern": pattern},
            "total": {"type": "integer", "minimum": 0, "maximum": 999},
        },
        "required": [string_field, "total"],
        "additionalProperties": False,
    }
