"""The limits of ``spec.graphql``, flattened once at policy-compile time."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.model.policy import GraphQLSpec


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 65536
    max_depth: int = 12
    max_aliases: int = 15
    max_root_fields: int = 20
    max_directives: int = 50
    max_tokens: int = 5000
    max_cost: int = 1000
    default_list_size: int = 10
    max_list_size: int = 100
    introspection_allowed: bool = True

    @classmethod
    def from_spec(cls, spec: GraphQLSpec) -> Limits:
        return cls(
            max_body_bytes=spec.max_body_bytes,
            max_depth=spec.max_depth,
            max_aliases=spec.max_aliases,
            max_root_fields=spec.max_root_fields,
            max_directives=spec.max_directives,
            max_tokens=spec.max_tokens,
            max_cost=spec.max_cost,
            default_list_size=spec.default_list_size,
            max_list_size=spec.max_list_size,
            introspection_allowed=spec.introspection == "allow",
        )
