"""Offline, strict validation of custom resources against their CRDs' schemas.

``kubernetes-validate`` knows the built-in kinds only. The JSON Schemas in
``tests/crd_schemas`` are the upstream CRDs' own OpenAPI v3 schemas made strict (an
unknown or misspelt field fails) by ``tests/crd_schemas/convert.py``; see the README
there for the upstream versions. A schema is picked by the document's ``apiVersion``
(group/version) and ``kind``, and applied with ``jsonschema`` (Draft 7).

Formats checked: ``date-time`` (RFC 3339), ``int32`` and ``int64`` (range). As with
``kubectl``, a YAML timestamp (which PyYAML loads as a date or datetime) counts as a
string: kubectl sends it to the API server as the string it was written as.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

SCHEMA_DIR = Path(__file__).resolve().parent / "crd_schemas"

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$",
)
_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time")
def _date_time(value: object) -> bool:
    if isinstance(value, datetime.date):  # a YAML timestamp: a date alone is no date-time
        return isinstance(value, datetime.datetime)
    if not isinstance(value, str):
        return True
    match = _RFC3339.match(value)
    if not match:
        return False
    try:  # the fields' ranges: no month 13, no 25:00
        datetime.datetime.fromisoformat(value[:19].replace("t", "T"))
    except ValueError:
        return False
    offset = match.group(2)
    return offset in "Zz" or (int(offset[1:3]) < 24 and int(offset[4:]) < 60)


def _int_range(bits: int):
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(value: object) -> bool:
        if isinstance(value, int) and not isinstance(value, bool):
            return low <= value <= high
        return True

    return check


_FORMATS.checks("int32")(_int_range(32))
_FORMATS.checks("int64")(_int_range(64))

_TYPES = jsonschema.Draft7Validator.TYPE_CHECKER.redefine(
    "string", lambda _checker, value: isinstance(value, (str, datetime.date))
)
_Validator = jsonschema.validators.extend(jsonschema.Draft7Validator, type_checker=_TYPES)


@functools.cache
def _schemas() -> dict[tuple[str, str], Path]:
    """(apiVersion, kind) -> schema file, from the constants each schema pins them to."""
    found: dict[tuple[str, str], Path] = {}
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        props = json.loads(path.read_text())["properties"]
        key = (props["apiVersion"]["const"], props["kind"]["const"])
        assert key not in found, f"{path.name} and {found[key].name} both claim {key}"
        found[key] = path
    return found


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads(_schemas()[api_version, kind].read_text())
    _Validator.check_schema(schema)
    return _Validator(schema, format_checker=_FORMATS)


def known_custom_kinds() -> set[tuple[str, str]]:
    """The (apiVersion, kind) pairs with a schema, e.g. ("cert-manager.io/v1", "Certificate")."""
    return set(_schemas())


def _path(parts: Any) -> str:
    """``spec.endpoints[0].port``; a key that is no identifier is quoted: ``labels["a.b/c"]``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_$][\w$-]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text or "(document)"


def _join(parent: str, key: str) -> str:
    return _path([key]) if parent == "(document)" else parent + _path(["_", key])[1:]


def _describe(error: ValidationError) -> list[str]:
    """One or more 'path: problem' lines for a jsonschema error."""
    where = _path(error.absolute_path)
    schema, instance = error.schema, error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = sorted(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extra = [
            k for k in instance if k not in known and not any(re.search(p, k) for p in patterns)
        ]
        lines = []
        for key in extra:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(known)}"
            lines.append(f"{_join(where, key)}: unknown field ({hint})")
        return lines or [f"{where}: {error.message}"]
    if error.validator == "required" and isinstance(instance, dict):
        missing = [k for k in error.validator_value if k not in instance]
        return [f"{_join(where, key)}: required field missing" for key in missing]
    line = f"{where}: {error.message}"
    if error.context:
        sub = best_match(error.context)
        line += f" (closest: {_path([*error.absolute_path, *sub.relative_path])}: {sub.message})"
    return [line]


def validate_custom_resource(doc: dict[str, Any]) -> None:
    """Check one custom resource against its CRD's schema.

    Raises ``KeyError`` when there is no schema for the document's (apiVersion, kind),
    and ``AssertionError`` naming the document (kind/name) and, one line each, the path
    and the problem of every error found.
    """
    if not isinstance(doc, dict):
        raise TypeError(f"a custom resource is a mapping, not {type(doc).__name__}")
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in _schemas():
        known = ", ".join(f"{a} {k}" for a, k in sorted(_schemas()))
        raise KeyError(
            f"no CRD schema for apiVersion {key[0]!r}, kind {key[1]!r} in {SCHEMA_DIR.name}/ "
            f"(known: {known})"
        )
    errors = sorted(
        _validator(*key).iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]
    )
    if errors:
        metadata = doc.get("metadata")
        name = metadata.get("name", "?") if isinstance(metadata, dict) else "?"
        lines = list(dict.fromkeys(line for e in errors for line in _describe(e)))
        raise AssertionError(
            f"{key[1]}/{name} ({key[0]}) does not match its CRD schema:\n  " + "\n  ".join(lines)
        )
