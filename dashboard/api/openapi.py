"""The OpenAPI 3 document, generated from the job params dataclasses and the route table."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

from dashboard.api.jobspec import API_KINDS, PARAMS, bounds

_SCALARS: dict[Any, dict[str, Any]] = {
    int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"}, str: {"type": "string"},
}
_BOUNDS = ("minimum", "maximum", "minItems", "minLength", "description", "enum")


def type_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of a type hint (scalars, lists, optionals, unions, dicts)."""
    if hint in _SCALARS:
        return dict(_SCALARS[hint])
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is list or origin is tuple:
        return {"type": "array", "items": type_schema(args[0]) if args else {}}
    if origin is dict:
        return {"type": "object", "additionalProperties": True}
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        schema = type_schema(arms[0]) if len(arms) == 1 else {"anyOf": [type_schema(a) for a in arms]}
        if type(None) in args:
            schema["nullable"] = True
        return schema
    return {}


def dataclass_schema(cls: type[Any]) -> dict[str, Any]:
    """An object schema with one property per dataclass field; fields without defaults are required."""
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        prop = type_schema(hints[f.name])
        for key in _BOUNDS:
            if key in f.metadata:
                prop[key] = f.metadata[key]
        span = bounds(f.name)
        if span is not None:
            target = prop["items"] if prop.get("type") == "array" else prop
            target["minimum"], target["maximum"] = span
        if f.default is not dataclasses.MISSING:
            prop["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        elif f.default_factory is not dataclasses.MISSING:
            prop["default"] = f.default_factory()
        else:
            required.append(f.name)
        props[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):  # not the dataclass's generated one
        schema["description"] = cls.__doc__.strip().splitlines()[0]
    if required:
        schema["required"] = required
    return schema


def _name(cls: type[Any]) -> str:
    return cls.__name__


def job_request_schema() -> dict[str, Any]:
    """`{"kind", "params"}`: one arm per job kind, its params the kind's dataclass."""
    arms = []
    for kind in API_KINDS:
        arms.append({
            "type": "object", "additionalProperties": False, "required": ["kind", "params"],
            "properties": {"kind": {"type": "string", "enum": [kind.value]},
                           "params": {"$ref": f"#/components/schemas/{_name(PARAMS[kind])}"}},
        })
    return {"oneOf": arms}


def document(routes: Sequence[Any], *, version: str, response_types: Sequence[type[Any]]) -> dict[str, Any]:
    """The whole document: every ApiRoute's operation, and the schemas of the dataclasses they use."""
    schemas: dict[str, Any] = {_name(PARAMS[k]): dataclass_schema(PARAMS[k]) for k in API_KINDS}
    schemas.update({_name(c): dataclass_schema(c) for c in response_types})
    schemas["JobRequest"] = job_request_schema()
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        paths.setdefault(r.path, {})[r.method.lower()] = r.operation()
    return {
        "openapi": "3.0.3",
        "info": {"title": "qlab API", "version": version,
                 "description": "The team lab's models, jobs and results for CI. Every route but /health and "
                                "/openapi.json needs `Authorization: Bearer <token>`."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
