"""JSON schemas the guided-decoding tests share."""

from __future__ import annotations

import dataclasses


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


# -- the user-style corpus ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UserSchema:
    """A schema written the way users write them (OpenAI structured-output style) and what must happen
    to it: `refused` None -> it runs and every value validates; else the keyword the refusal names."""

    name: str
    schema: dict
    refused: str | None = None


def _obj(properties: dict, required: list[str] | None = None, **extra) -> dict:
    """An OpenAI "strict" object: every property required, no other properties."""
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required, "additionalProperties": False,
            **extra}


_SKU = {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}
_SHORT = {"type": "string", "maxLength": 12}
_QTY = {"type": "integer", "minimum": 1, "maximum": 99}
_MONEY = {"type": "number", "minimum": 0, "maximum": 10000}

USER_SCHEMAS: list[UserSchema] = [
    UserSchema("invoice_number", _obj({"invoice_number": {"type": "string", "pattern": "^INV-[0-9]{4}$",
                                                          "maxLength": 8}})),
    UserSchema("postcode_min_max", _obj({"postcode": {"type": "string", "pattern": "^[0-9]+$", "minLength": 4,
                                                      "maxLength": 5}})),
    UserSchema("issue_date", _obj({"issue_date": {"type": "string", "format": "date"}})),
    UserSchema("received_at", _obj({"received_at": {"type": "string", "format": "date-time"}})),
    UserSchema("contact_email", _obj({"email": {"type": "string", "format": "email", "maxLength": 24}})),
    UserSchema("document_uuid", _obj({"id": {"type": "string", "format": "uuid"}})),
    UserSchema("currency_enum", _obj({"currency": {"type": "string", "enum": ["EUR", "USD", "GBP", "CHF"]},
                                      "total": _MONEY})),
    UserSchema("doc_type_const", _obj({"doc_type": {"const": "invoice"}, "pages": _QTY})),
    UserSchema("line_items", _obj({"items": {"type": "array", "minItems": 1, "maxItems": 3,
                                             "items": _obj({"sku": _SKU, "qty": _QTY, "price": _MONEY})}})),
    UserSchema("table_rows", _obj({"rows": {"type": "array", "minItems": 2, "maxItems": 2,
                                            "items": {"type": "array", "minItems": 2, "maxItems": 2,
                                                      "items": {"type": "integer", "minimum": 0,
                                                                "maximum": 9}}}})),
    UserSchema("amount_any_of", _obj({"amount": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 999},
                                                           {"type": "string", "pattern": "^[0-9]{1,3}[.][0-9]{2}$"}]}})),
    UserSchema("party_one_of", _obj({"party": {"oneOf": [
        _obj({"kind": {"const": "person"}, "name": _SHORT}),
        _obj({"kind": {"const": "company"}, "vat": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{6}$"}})]}})),
    UserSchema("addresses_defs_ref", {
        "$defs": {"address": _obj({"city": _SHORT, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})},
        **_obj({"billing": {"$ref": "#/$defs/address"}, "shipping": {"$ref": "#/$defs/address"}})}),
    UserSchema("nullable_fields", _obj({"po_number": {"type": ["string", "null"], "maxLength": 8},
                                        "discount": {"type": ["number", "null"], "minimum": 0, "maximum": 100}})),
    UserSchema("nullable_any_of", _obj({"due": {"anyOf": [{"type": "string", "format": "date"},
                                                          {"type": "null"}]}})),
    UserSchema("nested_strict", _obj({"vendor": _obj({"name": _SHORT, "country": {
        "type": "string", "enum": ["DE", "FR", "IT"]}}), "paid": {"type": "boolean"}})),
    UserSchema("bounded_integers", _obj({"year": {"type": "integer", "minimum": 1990, "maximum": 2030},
                                         "month": {"type": "integer", "minimum": 1, "maximum": 12}})),
    UserSchema("exclusive_bounds", _obj({"ratio": {"type": "number", "exclusiveMinimum": 0,
                                                   "exclusiveMaximum": 1}})),
    UserSchema("multiple_of", _obj({"quantity": {"type": "integer", "multipleOf": 5, "minimum": 0,
                                                 "maximum": 100}})),
    UserSchema("tags_enum_array", _obj({"tags": {"type": "array", "maxItems": 3,
                                                 "items": {"enum": ["urgent", "paid", "draft"]}}})),
    UserSchema("tuple_prefix_items", _obj({"point": {"type": "array", "prefixItems": [
        {"type": "integer", "minimum": 0, "maximum": 99}, {"type": "integer", "minimum": 0, "maximum": 99}],
        "items": False}})),
    UserSchema("all_of", {"allOf": [_obj({"total": _MONEY}), {"required": ["total"]}]}),
    UserSchema("optional_properties", {"type": "object", "properties": {"note": _SHORT, "total": _MONEY},
                                       "required": ["total"], "additionalProperties": False}),
    UserSchema("integer_enum", _obj({"vat_rate": {"type": "integer", "enum": [0, 7, 19]}})),
    UserSchema("ipv4_address", _obj({"ip": {"type": "string", "format": "ipv4"}})),
    UserSchema("time_of_day", _obj({"time": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}})),
    UserSchema("pattern_properties", {"type": "object", "patternProperties": {"^[a-z]{1,3}$": _QTY},
                                      "maxProperties": 2, "additionalProperties": False}),
    UserSchema("string_lengths", _obj({"code": {"type": "string", "minLength": 2, "maxLength": 4}})),
    UserSchema("recursive_sections", {
        "$defs": {"section": _obj({"title": {"type": "string", "maxLength": 6},
                                   "children": {"type": "array", "maxItems": 1,
                                                "items": {"$ref": "#/$defs/section"}}})},
        "$ref": "#/$defs/section"}),
    UserSchema("boolean_flags", _obj({"signed": {"type": "boolean"}, "stamped": {"type": "boolean"}})),
    # Keywords no backend the engine can run enforces: refused up front, the keyword named.
    UserSchema("unique_items", _obj({"ids": {"type": "array", "items": _QTY, "maxItems": 3, "uniqueItems": True}}),
               refused="uniqueItems"),
    UserSchema("contains", _obj({"ids": {"type": "array", "items": _QTY, "maxItems": 3, "contains": {"const": 1}}}),
               refused="contains"),
    UserSchema("property_names", {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}, "maxProperties": 2},
               refused="propertyNames"),
    UserSchema("if_then", {**_obj({"kind": {"enum": ["a", "b"]}, "n": _QTY}),
                           "if": {"properties": {"kind": {"const": "a"}}}, "then": {"properties": {"n": {"const": 1}}}},
               refused="if"),
    UserSchema("not", _obj({"code": {"type": "string", "maxLength": 3, "not": {"const": "abc"}}}), refused="not"),
    UserSchema("uri_reference", _obj({"link": {"type": "string", "format": "uri-reference"}}),
               refused="uri-reference"),
]
