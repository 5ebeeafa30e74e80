"""The custom resources' schemas (``tests/crd_schemas``) and ``crd_schema``, the helper
that applies them: minimal valid resources pass; a misspelt field, a wrong type, a
missing required field, a bad enum or pattern each fail with the path in the message;
the schema files are strict, compact and what ``convert.py`` makes of a CRD.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from crd_schema import SCHEMA_DIR, known_custom_kinds, validate_custom_resource

MONITORING = "monitoring.coreos.com/v1"

VALID: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "apiVersion": MONITORING,
        "kind": "ServiceMonitor",
        "metadata": {"name": "ganserve", "labels": {"app.kubernetes.io/name": "ganserve"}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "ganserve"}},
            "endpoints": [{"port": "metrics", "interval": "15s", "path": "/metrics"}],
        },
    },
    "PodMonitor": {
        "apiVersion": MONITORING,
        "kind": "PodMonitor",
        "metadata": {"name": "ganserve", "namespace": "ganserve"},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "ganserve"}},
            "podMetricsEndpoints": [{"port": "metrics", "scrapeTimeout": "10s"}],
        },
    },
    "PrometheusRule": {
        "apiVersion": MONITORING,
        "kind": "PrometheusRule",
        "metadata": {"name": "ganserve"},
        "spec": {
            "groups": [
                {
                    "name": "ganserve",
                    "rules": [
                        {
                            "alert": "GanserveDown",
                            "expr": 'up{job="ganserve"} == 0',
                            "for": "5m",
                            "labels": {"severity": "page"},
                            "annotations": {"summary": "ganserve is down"},
                        },
                        {"record": "job:ganserve_requests:rate5m", "expr": "1"},
                    ],
                }
            ]
        },
    },
    "Certificate": {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "ganserve"},
        "spec": {
            "secretName": "ganserve-tls",
            "duration": "2160h",
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["server auth"],
            "dnsNames": ["ganserve.ganserve.svc"],
            "issuerRef": {"name": "ganserve-ca", "kind": "ClusterIssuer"},
        },
    },
    "GRPCRoute": {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "ganserve"},
        "spec": {
            "parentRefs": [{"name": "ganserve", "namespace": "gateway", "sectionName": "grpc"}],
            "hostnames": ["ganserve.example.com"],
            "rules": [
                {
                    "matches": [{"method": {"service": "ganserve.v1.Generator"}}],
                    "backendRefs": [{"name": "ganserve", "port": 50051}],
                }
            ],
        },
    },
}


def _doc(kind: str) -> dict[str, Any]:
    return copy.deepcopy(VALID[kind])


def _fails(doc: dict[str, Any], *expected: str) -> str:
    """The AssertionError's message; each expected fragment must be in it."""
    with pytest.raises(AssertionError) as caught:
        validate_custom_resource(doc)
    message = str(caught.value)
    for fragment in expected:
        assert fragment in message, message
    return message


def test_known_custom_kinds() -> None:
    assert known_custom_kinds() == {
        (MONITORING, "ServiceMonitor"),
        (MONITORING, "PodMonitor"),
        (MONITORING, "PrometheusRule"),
        ("cert-manager.io/v1", "Certificate"),
        ("gateway.networking.k8s.io/v1", "GRPCRoute"),
    }


@pytest.mark.parametrize("kind", sorted(VALID))
def test_minimal_valid_resource_passes(kind: str) -> None:
    assert (VALID[kind]["apiVersion"], kind) in known_custom_kinds()
    validate_custom_resource(_doc(kind))


# --- misspelt (unknown) fields --------------------------------------------------------------


def test_misspelt_top_level_spec_field() -> None:
    doc = _doc("ServiceMonitor")
    doc["spec"]["endpoint"] = doc["spec"].pop("endpoints")
    message = _fails(doc, "ServiceMonitor/ganserve", "spec.endpoint: unknown field", "endpoints")
    # ... and, being gone, endpoints is reported missing too.
    assert "spec.endpoints: required field missing" in message


def test_misspelt_certificate_secret_name() -> None:
    doc = _doc("Certificate")
    doc["spec"]["secretname"] = doc["spec"].pop("secretName")
    _fails(
        doc,
        "Certificate/ganserve",
        "spec.secretname: unknown field (did you mean secretName?)",
        "spec.secretName: required field missing",
    )


@pytest.mark.parametrize(
    ("kind", "where", "field", "path"),
    [
        ("ServiceMonitor", ("spec", "endpoints", 0), "intervall", "spec.endpoints[0].intervall"),
        ("PodMonitor", ("spec", "podMetricsEndpoints", 0), "portt", "podMetricsEndpoints[0].portt"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0), "label", "rules[0].label"),
        ("Certificate", ("spec", "privateKey"), "algorithim", "spec.privateKey.algorithim"),
        ("GRPCRoute", ("spec", "rules", 0, "matches", 0), "methods", "matches[0].methods"),
        ("GRPCRoute", (), "specs", "specs: unknown field"),
        ("Certificate", ("metadata",), "lables", "metadata.lables: unknown field"),
    ],
)
def test_misspelt_nested_field(kind: str, where: tuple[Any, ...], field: str, path: str) -> None:
    doc = _doc(kind)
    node: Any = doc
    for step in where:
        node = node[step]
    node[field] = "x"
    _fails(doc, path, "unknown field")


# --- wrong types, enums, patterns, formats ----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "where", "value", "path"),
    [
        ("ServiceMonitor", ("spec", "endpoints", 0, "port"), 8080, "spec.endpoints[0].port"),
        ("ServiceMonitor", ("spec", "endpoints"), {"port": "metrics"}, "spec.endpoints"),
        ("PodMonitor", ("spec", "selector", "matchLabels", "app"), 1, "matchLabels.app"),
        ("Certificate", ("spec", "duration"), 2160, "spec.duration"),
        ("Certificate", ("spec", "dnsNames"), "ganserve", "spec.dnsNames"),
        ("GRPCRoute", ("spec", "rules", 0, "backendRefs", 0, "port"), "50051", "backendRefs[0]"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "expr"), True, "rules[0].expr"),
        (
            "ServiceMonitor",
            ("metadata", "labels", "app.kubernetes.io/name"),
            3,
            'metadata.labels["app.kubernetes.io/name"]',
        ),
    ],
)
def test_wrong_type(kind: str, where: tuple[Any, ...], value: Any, path: str) -> None:
    doc = _doc(kind)
    node: Any = doc
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = value
    _fails(doc, f"{kind}/ganserve", path, "is not of type")


@pytest.mark.parametrize(
    ("kind", "where", "value", "path"),
    [
        ("Certificate", ("spec", "privateKey", "algorithm"), "EC", "spec.privateKey.algorithm"),
        ("Certificate", ("spec", "usages", 0), "serverauth", "spec.usages[0]"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "for"), "5 minutes", "rules[0].for"),
        ("ServiceMonitor", ("spec", "endpoints", 0, "scheme"), "ftp", "endpoints[0].scheme"),
        ("GRPCRoute", ("spec", "rules", 0, "backendRefs", 0, "port"), 70000, "backendRefs[0].port"),
        ("GRPCRoute", ("spec", "hostnames", 0), "Not A Host", "spec.hostnames[0]"),
        ("ServiceMonitor", ("metadata", "name"), "Ganserve_Monitor", "metadata.name"),
        ("GRPCRoute", ("apiVersion",), "gateway.networking.k8s.io/v1", None),
    ],
)
def test_bad_value(kind: str, where: tuple[Any, ...], value: Any, path: str | None) -> None:
    doc = _doc(kind)
    node: Any = doc
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = value
    if path is None:  # the control: the value is the valid one
        validate_custom_resource(doc)
    else:
        _fails(doc, f"{path}: ")


def test_int_or_string_takes_both() -> None:
    doc = _doc("ServiceMonitor")
    for port in (8080, "metrics"):
        doc["spec"]["endpoints"][0]["targetPort"] = port
        validate_custom_resource(doc)
    doc["spec"]["endpoints"][0]["targetPort"] = 80.5
    _fails(doc, "spec.endpoints[0].targetPort: 80.5 is not of type 'integer', 'string'")


def test_case_insensitive_pattern_from_go_syntax() -> None:
    # Upstream's ^(?i)(abort|warn)?$ is Go syntax Python rejects; convert.py moves the flag.
    doc = _doc("PrometheusRule")
    for strategy in ("warn", "ABORT", ""):
        doc["spec"]["groups"][0]["partial_response_strategy"] = strategy
        validate_custom_resource(doc)
    doc["spec"]["groups"][0]["partial_response_strategy"] = "ignore"
    _fails(doc, "spec.groups[0].partial_response_strategy: ")


def test_date_time_and_int32_formats_are_checked() -> None:
    condition = {
        "type": "Ready",
        "status": "True",
        "lastTransitionTime": "2026-01-02T03:04:05Z",
        "observedGeneration": 1,
    }
    doc = _doc("Certificate")
    doc["status"] = {"conditions": [condition], "revision": 2}
    validate_custom_resource(doc)
    for stamp in ("2026-01-02T03:04:05.123456+01:00", "2026-01-02t03:04:05z"):
        condition["lastTransitionTime"] = stamp
        validate_custom_resource(doc)
    for stamp in ("yesterday", "2026-13-02T03:04:05Z", "2026-01-02 03:04:05"):
        condition["lastTransitionTime"] = stamp
        _fails(doc, "status.conditions[0].lastTransitionTime: ", "date-time")
    condition["lastTransitionTime"] = "2026-01-02T03:04:05Z"
    doc["spec"]["revisionHistoryLimit"] = 2**31
    _fails(doc, "spec.revisionHistoryLimit: ", "int32")


def test_a_yaml_timestamp_counts_as_the_string_kubectl_sends() -> None:
    doc = yaml.safe_load(
        "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: c}\n"
        "spec: {secretName: s, issuerRef: {name: ca}}\n"
        "status: {notAfter: 2026-01-02T03:04:05Z, conditions: []}\n"
    )
    assert not isinstance(doc["status"]["notAfter"], str)  # PyYAML made it a datetime
    validate_custom_resource(doc)
    doc["metadata"]["labels"] = yaml.safe_load("day: 2026-01-02")  # a string to kubectl too
    validate_custom_resource(doc)


# --- missing required fields ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "where", "path"),
    [
        ("ServiceMonitor", ("spec", "selector"), "spec.selector"),
        ("PodMonitor", ("spec", "selector"), "spec.selector"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "expr"), "rules[0].expr"),
        ("PrometheusRule", ("spec", "groups", 0, "name"), "spec.groups[0].name"),
        ("Certificate", ("spec", "issuerRef"), "spec.issuerRef"),
        ("Certificate", ("spec", "issuerRef", "name"), "spec.issuerRef.name"),
        ("GRPCRoute", ("spec", "parentRefs", 0, "name"), "spec.parentRefs[0].name"),
        ("GRPCRoute", ("spec",), "spec"),
    ],
)
def test_missing_required_field(kind: str, where: tuple[Any, ...], path: str) -> None:
    doc = _doc(kind)
    node: Any = doc
    for step in where[:-1]:
        node = node[step]
    del node[where[-1]]
    _fails(doc, f"{kind}/ganserve", f"{path}: required field missing")


def test_metadata_needs_a_name() -> None:
    doc = _doc("PodMonitor")
    del doc["metadata"]["name"]
    _fails(doc, "PodMonitor/?", "metadata.name: required field missing")


def test_every_error_is_reported_once_per_line() -> None:
    doc = _doc("Certificate")
    doc["spec"]["secretname"] = doc["spec"].pop("secretName")
    doc["spec"]["duration"] = 1
    del doc["spec"]["issuerRef"]
    lines = _fails(doc).splitlines()
    assert lines[0] == "Certificate/ganserve (cert-manager.io/v1) does not match its CRD schema:"
    assert len(lines) == 5 and len(set(lines)) == 5, lines


# --- no schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        ("monitoring.coreos.com/v1alpha1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "Probe"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("apps/v1", "Deployment"),
        (None, None),
    ],
)
def test_no_schema_is_a_key_error(api_version: str | None, kind: str | None) -> None:
    with pytest.raises(KeyError, match="no CRD schema for apiVersion"):
        validate_custom_resource({"apiVersion": api_version, "kind": kind, "metadata": {}})


# --- the schema files ---------------------------------------------------------------------------


def _schema_files() -> list[Path]:
    return sorted(SCHEMA_DIR.glob("*.json"))


def _object_schemas(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if "properties" in node and isinstance(node["properties"], dict):
            found.append(node)
        for key, value in node.items():
            if key in ("properties", "patternProperties"):
                for sub in value.values():
                    found += _object_schemas(sub)
            elif key not in ("enum", "default", "const", "required"):
                found += _object_schemas(value)
    elif isinstance(node, list):
        for item in node:
            found += _object_schemas(item)
    return found


@pytest.mark.parametrize("path", _schema_files(), ids=lambda p: p.name)
def test_schema_files_are_strict_compact_draft7(path: Path) -> None:
    text = path.read_text()
    schema = json.loads(text)
    jsonschema.Draft7Validator.check_schema(schema)
    assert text.count("\n") == 1 and text.endswith("}\n"), "minified, one line"
    assert "x-kubernetes-" not in text and '"description":"' not in text
    props = schema["properties"]
    group, version = props["apiVersion"]["const"].split("/")
    assert path.name == f"{group}_{version}_{props['kind']['const'].lower()}.json"
    objects = _object_schemas(schema)
    assert len(objects) > 3
    for node in objects:
        assert node.get("additionalProperties") is not None, sorted(node["properties"])


def _load_convert() -> Any:
    spec = importlib.util.spec_from_file_location("crd_convert", SCHEMA_DIR / "convert.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMALL_CRD = """\
{{- if .Values.crds.enabled }}
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
  labels:
    {{- include "labels" . | nindent 4 }}
spec:
  group: example.com
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema: {type: object}
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        description: A widget.
        type: object
        properties:
          apiVersion: {type: string}
          kind: {type: string}
          metadata: {type: object}
          spec:
            type: object
            required: [size]
            x-kubernetes-validations:
            - rule: self.size > 0
            properties:
              size:
                description: How big.
                x-kubernetes-int-or-string: true
                anyOf: [{type: integer}, {type: string}]
              description: {type: string, nullable: true}
              mode: {type: string, enum: [a, b], pattern: '^(?i)(a|b)$'}
              timeout: {type: string, format: duration}
              count: {type: integer, format: int32, minimum: 0, exclusiveMinimum: true}
              extra:
                type: object
                x-kubernetes-preserve-unknown-fields: true
                properties:
                  known: {type: string}
              tags:
                type: array
                x-kubernetes-list-type: set
                items: {type: string}
{{- end }}
"""


def test_convert_makes_a_strict_schema_from_a_helm_templated_crd(tmp_path: Path) -> None:
    convert = _load_convert()
    source = tmp_path / "crd-widgets.yaml"
    source.write_text(SMALL_CRD)
    assert convert.main([str(source), "--out", str(tmp_path)]) == 0
    out = tmp_path / "example.com_v1_widget.json"
    text = out.read_text()
    assert text.count("\n") == 1
    schema = json.loads(text)
    assert schema["required"] == ["apiVersion", "kind", "metadata"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["kind"] == {"type": "string", "const": "Widget"}
    assert schema["properties"]["metadata"] == convert.OBJECT_META
    spec = schema["properties"]["spec"]
    assert spec == {
        "type": "object",
        "required": ["size"],
        "additionalProperties": False,
        "properties": {
            "size": {"type": ["integer", "string"]},
            "description": {"type": ["string", "null"]},  # a field named like a keyword
            "mode": {"type": "string", "enum": ["a", "b"], "pattern": "(?i)^(a|b)$"},
            "timeout": {"type": "string"},  # Go duration: no JSON Schema format
            "count": {"type": "integer", "format": "int32", "exclusiveMinimum": 0},
            "extra": {"type": "object", "properties": {"known": {"type": "string"}}},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    validator = jsonschema.Draft7Validator(schema)
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert not list(validator.iter_errors({**widget, "spec": {"size": "1Gi", "extra": {"x": 1}}}))
    assert list(validator.iter_errors({**widget, "spec": {"size": 1, "sise": 2}}))


def test_committed_files_are_as_convert_writes_them() -> None:
    # The committed files were made by this convert.py: re-serialising them the way it
    # writes gives the same bytes (sorted keys, minified).
    for path in _schema_files():
        schema = json.loads(path.read_text())
        assert path.read_text() == json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n"
        assert re.search(r"made by convert\.py", schema["$comment"])
