"""Every vault API request checked against the published description before a handler reads it.

The description (openapi.py) is the one source: what it allows the API accepts, and anything else
is a 400 naming the field. The handlers keep their own checks, and answer 422 for the rules a
schema cannot state (a budget that must exist, a key that needs a cap).

Schemas are read as JSON Schema means them: a pattern is ECMA 262 (`\\d` an ASCII digit, `$` the
end of the text, where Python's `$` also matches before a final newline), `format: date-time` is
RFC 3339, and 1.0 is an integer. Query parameters arrive as text: an integer or boolean one is
read as one first (`true`/`false`, as OpenAPI writes booleans).
"""

import json
import re
from dataclasses import dataclass
from functools import lru_cache

from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators

from ..durations import parse_rfc3339, parse_rfc3339_date
from ..text import loggable
from .openapi import OPENAPI
from .openapi_inputs import PATTERN_RULES

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_INTEGER = re.compile(r"-?[0-9]{1,30}")  # as str(int) writes one


@dataclass(frozen=True)
class Invalid:
    field: str
    message: str
    code: str = "invalid_field"


@dataclass(frozen=True)
class Operation:
    template: str
    method: str
    path_pattern: re.Pattern
    parameters: tuple[dict, ...]
    body_schema: dict | None  # None: the operation takes no body


@lru_cache(maxsize=512)
def ecma_pattern(pattern: str) -> re.Pattern:
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern, re.ASCII)


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not ecma_pattern(pattern).search(instance):
        yield ValidationError(PATTERN_RULES.get(pattern) or f"'{loggable(instance, 60)}' does not match {pattern}")


_A = {"string": "a string", "integer": "a whole number", "number": "a number", "boolean": "true or false",
      "array": "an array", "object": "a JSON object", "null": "null"}


def _type(validator, types, instance, schema):
    types = [types] if isinstance(types, str) else types
    if not any(validator.is_type(instance, kind) for kind in types):
        yield ValidationError("expected " + " or ".join(_A.get(kind, kind) for kind in types))


_FORMATS = FormatChecker(formats=())
_FORMATS.checks("date-time")(lambda text: not isinstance(text, str) or parse_rfc3339(text) is not None)
_FORMATS.checks("date")(lambda text: not isinstance(text, str) or parse_rfc3339_date(text) is not None)
_Validator = validators.extend(Draft202012Validator, {"pattern": _pattern, "type": _type})


class Description:
    """The operations of an OpenAPI description, found by method and path, and their checks."""

    def __init__(self, openapi: dict) -> None:
        self._components = openapi.get("components", {})
        self._validators: dict[int, Draft202012Validator] = {}
        operations = []
        for template, item in openapi["paths"].items():
            shared = item.get("parameters", [])
            pattern = re.compile("^" + re.sub(r"\\\{([^/]+?)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")
            for method in _METHODS:
                if (operation := item.get(method)) is not None:
                    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
                    operations.append(Operation(template, method.upper(), pattern,
                                                (*shared, *operation.get("parameters", [])), body.get("schema")))
        # A literal path before a templated one: /vault/alerts/deliveries is not subscription "deliveries".
        self._operations = sorted(operations, key=lambda o: o.template.count("{"))

    def find(self, method: str, path: str) -> Operation | None:
        """The operation `method` `path` is, or None (no such path, or not that method on it)."""
        return next((o for o in self._on_path(path) if o.method == method), None)

    def allowed_methods(self, path: str) -> frozenset[str] | None:
        """The methods the description declares on `path`, or None when it has no such path."""
        return frozenset(o.method for o in self._on_path(path)) or None

    def _on_path(self, path: str) -> list[Operation]:
        path = path.rstrip("/") or "/"  # as VaultApi routes it
        template = next((o.template for o in self._operations if o.path_pattern.match(path)), None)
        return [o for o in self._operations if o.template == template]

    def check(self, operation: Operation, path: str, query: dict[str, str], headers: dict[str, str],
              body: bytes) -> Invalid | None:
        """The first way the request does not fit `operation`, or None."""
        path_values = operation.path_pattern.match(path.rstrip("/") or "/").groupdict()
        for parameter in operation.parameters:
            name, where = parameter["name"], parameter["in"]
            sent = {"path": path_values, "query": query, "header": headers}.get(where, {})
            value = sent.get(name.lower() if where == "header" else name)
            if value is None:
                if parameter.get("required"):
                    return Invalid(name, f"{name}: required ({where} parameter)")
                continue
            schema = parameter.get("schema", {})
            if where == "query":
                value = _from_query(value, schema)
            if (problem := self._first_problem(schema, value)) is not None:
                explained = parameter.get("description")
                return Invalid(name, f"{name}: {problem.message}" + (f" ({explained})" if explained else ""))
        if operation.body_schema is not None:
            return self._check_body(operation.body_schema, body)
        return None

    def _check_body(self, schema: dict, body: bytes) -> Invalid | None:
        try:
            document = json.loads(body or b"null")
            json.dumps(document, ensure_ascii=False).encode()  # a lone surrogate (\ud800) is no text
        except (ValueError, UnicodeError, RecursionError) as failure:  # RecursionError: [[[[...]]]]
            return Invalid("body", f"the body is not valid JSON: {loggable(str(failure), 100)}", "invalid_json")
        if (problem := self._first_problem(schema, document)) is None:
            return None
        field = _field_of(problem)
        return Invalid(field, f"{field}: {problem.message}")

    def _first_problem(self, schema: dict, value) -> ValidationError | None:
        if (validator := self._validators.get(id(schema))) is None:
            validator = _Validator({**schema, "components": self._components}, format_checker=_FORMATS)
            self._validators[id(schema)] = validator  # the schemas live as long as the description
        errors = sorted(validator.iter_errors(value),
                        key=lambda e: ([str(step) for step in e.absolute_path], e.validator != "type"))
        if not errors:
            return None
        first = errors[0]
        first.message = loggable(first.message, 200)
        return first


def _from_query(text: str, schema: dict):
    """A query parameter's text as the value its schema describes (what OpenAPI's form style wrote)."""
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if "integer" in kinds and _INTEGER.fullmatch(text):
        return int(text)
    if "boolean" in kinds and text in ("true", "false"):
        return text == "true"
    return text


def _field_of(problem: ValidationError) -> str:
    if problem.absolute_path:
        return str(problem.absolute_path[0])[:40]
    instance = problem.instance if isinstance(problem.instance, dict) else {}
    if problem.validator == "required":
        return next((str(n) for n in problem.validator_value if n not in instance), "body")
    if problem.validator == "additionalProperties":
        known = problem.schema.get("properties", {})
        return next((str(n)[:40] for n in instance if n not in known), "body")
    return "body"


DESCRIPTION = Description(OPENAPI)
