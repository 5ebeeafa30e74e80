"""Convert a CustomResourceDefinition's OpenAPI v3 schema into a strict JSON Schema.

Usage: ``python tests/crd_schemas/convert.py CRD.yaml [CRD.yaml ...] [--version v1] [--out DIR]``

Each CustomResourceDefinition in the YAML files (plain CRD files, or Helm templates
of them: whole-line ``{{ ... }}`` directives are dropped first) gives one file,
``<group>_<version>_<kind lower-case>.json`` in DIR (default: this script's folder),
minified, for the version named (default ``v1``). No network is needed.

Strict the way kubeconform's ``openapi2jsonschema --strict`` makes it, and shaped for
the ``jsonschema`` package (Draft 7):

* every object schema with ``properties`` and neither ``additionalProperties`` nor
  ``x-kubernetes-preserve-unknown-fields: true`` gets ``additionalProperties: false``;
* ``x-kubernetes-int-or-string: true`` becomes ``type: [integer, string]`` (its
  ``anyOf`` of the two types is dropped), as does the older ``format: int-or-string``;
* ``nullable: true`` adds ``"null"`` to the type; any other null stays invalid (the
  API server would silently drop it, which in a manifest is almost always a mistake);
* OpenAPI 3.0's boolean ``exclusiveMinimum``/``exclusiveMaximum`` become Draft 7 numbers;
* ``description``, ``example``, ``externalDocs`` and every other ``x-kubernetes-*`` key
  (list/map types, CEL ``x-kubernetes-validations``) are dropped: not enforceable here;
* ``required``, ``enum``, ``type``, ``pattern``, ``format``, bounds, ``items``, ``anyOf``
  and friends are kept, except the ``format`` values in ``DROP_FORMATS``;
* at the root, ``apiVersion`` and ``kind`` become constants (``<group>/<version>``, the
  CRD's kind) and are required, as is ``metadata``; a ``metadata`` the CRD leaves as a
  bare ``type: object`` (they all do: the API server checks it) becomes ``OBJECT_META``,
  a strict subset of Kubernetes' ObjectMeta (name and namespace syntax included);
* a ``pattern`` (Go RE2 syntax upstream) that Python's ``re`` rejects is rewritten where
  the meaning is the same (an inline flag group after ``^`` moves to the front:
  ``^(?i)(a|b)$`` -> ``(?i)^(a|b)$``), else dropped with a warning on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

# Formats whose JSON Schema meaning differs from Kubernetes': a jsonschema format checker
# would reject valid values (Kubernetes' "duration" is Go's, e.g. "2160h", not ISO 8601).
DROP_FORMATS = frozenset({"duration", "int-or-string"})
# Schema keywords whose value is a map of name -> schema, a schema, or a list of schemas.
SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
SCHEMA_ONE = ("additionalProperties", "items", "not", "additionalItems")
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "items")
DROP_KEYS = frozenset({"description", "example", "externalDocs", "nullable"})
INT_OR_STRING = ["integer", "string"]
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# Kubernetes' ObjectMeta as a manifest (or `kubectl get -o yaml`) has it; no other field.
# A name is required: `kubectl apply` and kustomize need one (generateName is for create).
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {
            "type": "string",
            "maxLength": 253,
            "pattern": rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$",
        },
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": rf"^{_DNS_LABEL}$"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["apiVersion", "kind", "name", "uid"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string"},
                    "uid": {"type": "string"},
                    "controller": {"type": "boolean"},
                    "blockOwnerDeletion": {"type": "boolean"},
                },
            },
        },
        # Set by the API server; present in what `kubectl get -o yaml` prints.
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"], "format": "date-time"},
        "deletionTimestamp": {"type": "string", "format": "date-time"},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "managedFields": {"type": "array", "items": {"type": "object"}},
        "selfLink": {"type": "string"},
    },
}


def python_pattern(pattern: str) -> str | None:
    """The pattern in a form Python's ``re`` compiles, same meaning; None if there is none."""
    candidates = [pattern, re.sub(r"^\^(\(\?[ims]+\))", r"\1^", pattern)]
    for candidate in candidates:
        try:
            re.compile(candidate)
        except re.error:
            continue
        return candidate
    print(f"warning: pattern dropped, Python cannot compile it: {pattern!r}", file=sys.stderr)
    return None


def strict_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A converted copy of one OpenAPI v3 schema node (and everything under it)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROP_KEYS or key.startswith("x-kubernetes-"):
            continue
        if key in SCHEMA_MAPS:
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in SCHEMA_LISTS and isinstance(value, list):
            out[key] = [strict_schema(sub) for sub in value]
        elif key in SCHEMA_ONE and isinstance(value, dict):
            out[key] = strict_schema(value)
        elif key == "format" and value in DROP_FORMATS:
            continue
        elif key == "pattern" and isinstance(value, str):
            pattern = python_pattern(value)
            if pattern is not None:
                out[key] = pattern
        else:
            out[key] = value

    if node.get("x-kubernetes-int-or-string") or node.get("format") == "int-or-string":
        out["type"] = list(INT_OR_STRING)
        if out.get("anyOf") == [{"type": "integer"}, {"type": "string"}]:
            del out["anyOf"]
    if node.get("nullable") is True and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"] if "null" not in types else types
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        exclusive = out.pop(bound) if isinstance(out.get(bound), bool) else False
        if exclusive is True and limit in out:
            out[bound] = out.pop(limit)
    if (
        "properties" in node
        and "additionalProperties" not in node
        and node.get("x-kubernetes-preserve-unknown-fields") is not True
    ):
        out["additionalProperties"] = False
    return out


def load_crds(path: Path) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions in a YAML file, Helm directive lines removed."""
    text = "\n".join(
        line for line in path.read_text().splitlines() if not re.match(r"\s*\{\{.*\}\}\s*$", line)
    )
    docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    return [d for d in docs if d.get("kind") == "CustomResourceDefinition"]


def convert(crd: dict[str, Any], version: str) -> tuple[str, dict[str, Any]]:
    """(file name, JSON Schema) for one version of a CRD."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    entries = [v for v in spec["versions"] if v["name"] == version]
    if not entries:
        raise SystemExit(f"{crd['metadata']['name']}: no version {version!r}")
    entry = entries[0]
    schema = strict_schema(entry["schema"]["openAPIV3Schema"])
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "const": f"{group}/{version}"}
    props["kind"] = {"type": "string", "const": kind}
    if "properties" not in props.get("metadata", {}):
        props["metadata"] = OBJECT_META
    required = ["apiVersion", "kind", "metadata"]
    schema["required"] = required + [r for r in schema.get("required", []) if r not in required]
    return f"{group}_{version}_{kind.lower()}.json", {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": f"{crd['metadata']['name']} {version}, strict; made by convert.py",
        **schema,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crds", nargs="+", type=Path, help="CRD YAML file(s)")
    parser.add_argument("--version", default="v1", help="CRD version to take (default v1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    for path in args.crds:
        crds = load_crds(path)
        if not crds:
            print(f"{path}: no CustomResourceDefinition", file=sys.stderr)
            return 1
        for crd in crds:
            name, schema = convert(crd, args.version)
            text = json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n"
            (args.out / name).write_text(text)
            print(f"{name}: {len(text)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
