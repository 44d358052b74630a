"""The AbusePolicy CustomResourceDefinition, generated from the pydantic model.

Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no $ref, no
anyOf/oneOf that introduces types. Pydantic's JSON Schema is turned into that
shape here, so the CRD and the validator cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import yaml

from sidecar.model.policy import GROUP, KIND, PLURAL, VERSION, AbusePolicySpec

_DROP = {"title", "examples", "default_factory"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: _resolve(child, defs) for name, child in value.items()}
        else:
            out[key] = _resolve(value, defs)
    return _structural(out)


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    any_of = node.get("anyOf")
    if isinstance(any_of, list):
        # Optional[X] is anyOf [X, null]: keep X (absent and null mean the same).
        options = [o for o in any_of if o.get("type") != "null"]
        if len(options) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            merged = {**options[0], **rest}
            if merged.get("default", 0) is None:
                merged.pop("default")
            return merged
    if "const" in node:
        node = {**node, "enum": [node.pop("const")]}
    if node.get("type") == "object" and "additionalProperties" in node:
        extra = node["additionalProperties"]
        if extra is False:
            node.pop("additionalProperties")
        elif extra is True or extra == {}:
            node.pop("additionalProperties")
            node["x-kubernetes-preserve-unknown-fields"] = True
    if (
        node.get("type") == "object"
        and "properties" not in node
        and "additionalProperties" not in node
    ):
        node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("default", 0) is None:
        node.pop("default")
    return node


def spec_schema() -> dict[str, Any]:
    raw = AbusePolicySpec.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _resolve(raw, defs)
    schema.pop("description", None)
    return schema


def crd() -> dict[str, Any]:
    spec = spec_schema()
    status = {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {
                    "type": "object",
                    "required": ["type", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                        "reason": {"type": "string"},
                        "message": {"type": "string"},
                        "observedGeneration": {"type": "integer", "format": "int64"},
                        "lastTransitionTime": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["abp"],
                "categories": ["abuse-sidecar"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "AbusePolicy tells abuse-sidecar how to judge requests to the hosts it names.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `abuse-sidecar crd` from sidecar/model/policy.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)
