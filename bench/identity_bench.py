"""Cost per call of identity checks: cached vs fresh JWT verification, API keys.

    .venv/bin/python -m bench.identity_bench [--n 2000]

"fresh" verifies a token never seen before (parse, signature, claims, cache
insert); "cached" repeats one token (hash + dictionary lookup); "step" is the
whole identity step's evaluate() on a request carrying a repeated token.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import time
from collections.abc import Callable

from sidecar.identity.api_keys import SecretKeyTable
from sidecar.identity.jwk import parse_jwks
from sidecar.identity.jwks import JwksRegistry
from sidecar.identity.jwt import JwtVerifier, StaticKeys
from sidecar.model.policy import IdentitySpec
from sidecar.pipeline.context import RequestContext
from sidecar.steps.identity import build_identity_step
from sidecar.stores.base import Operation
from tests.identity_tokens import (
    AUDIENCE,
    ISSUER,
    claims,
    ec_key,
    jwks_document,
    jwt_rules,
    mint,
    public_jwk,
    request,
    rsa_key,
)


def per_call_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 100)):  # warm up
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def fresh_us(verifier: JwtVerifier, tokens: list[str]) -> float:
    start = time.perf_counter()
    for token in tokens:
        verifier.verify(token)
    return (time.perf_counter() - start) / len(tokens) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000, help="calls per measurement")
    n = parser.parse_args().n

    keys = StaticKeys(
        parse_jwks(jwks_document(public_jwk(rsa_key(), "rsa-1"), public_jwk(ec_key(), "ec-1")))
    )
    rows: list[tuple[str, float]] = []
    for alg, key, kid in (("RS256", rsa_key(), "rsa-1"), ("ES256", ec_key(), "ec-1")):
        tokens = [
            mint(key, claims(subject=f"user-{i}", jti=f"j{i}", lifetime_s=3600), alg=alg, kid=kid)
            for i in range(n)
        ]
        rows.append((f"{alg} fresh verify", fresh_us(JwtVerifier(jwt_rules(), keys), tokens)))
        verifier = JwtVerifier(jwt_rules(), keys)
        rows.append(
            (
                f"{alg} cached verify",
                per_call_us(functools.partial(verifier.verify, tokens[0]), n * 10),
            )
        )

    api_key = "sk_bench_0123456789abcdef"
    spec = IdentitySpec.model_validate(
        {
            "required": True,
            "jwt": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "jwks": jwks_document(public_jwk(rsa_key(), "rsa-1")),
            },
            "apiKey": {
                "keys": [
                    {
                        "id": "k",
                        "sha256": hashlib.sha256(api_key.encode()).hexdigest(),
                        "subject": "s",
                    }
                ]
            },
        }
    )
    step = build_identity_step(
        "bench/identity", spec, jwks=JwksRegistry(), secret_keys=SecretKeyTable()
    )
    token = mint(rsa_key(), claims(lifetime_s=3600), kid="rsa-1")
    jwt_ctx = request({"authorization": f"Bearer {token}"})
    key_ctx = request({"x-api-key": api_key})
    jwt_ctx.explain = key_ctx.explain = False

    def evaluate(ctx: RequestContext) -> None:
        ops: list[Operation] = []
        step.evaluate(ctx, ops)

    rows.append(("step, repeated RS256 token", per_call_us(lambda: evaluate(jwt_ctx), n * 10)))
    rows.append(("step, API key", per_call_us(lambda: evaluate(key_ctx), n * 10)))

    width = max(len(name) for name, _ in rows)
    print(f"{'measurement':<{width}}  {'us/call':>9}  {'calls/s':>10}")
    for name, us in rows:
        print(f"{name:<{width}}  {us:>9.2f}  {1e6 / us:>10,.0f}")


if __name__ == "__main__":
    main()
