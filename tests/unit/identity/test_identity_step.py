"""The identity step: outcomes of contract §4, headers, reports and what never leaks."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest

from sidecar.identity.api_keys import SecretApiKey, SecretKeyTable
from sidecar.identity.jwks import JwksRegistry
from sidecar.model.policy import IdentitySpec
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import Deny, Reason
from sidecar.steps.identity import IdentityConfigError, IdentityStep, build_identity_step
from sidecar.stores.base import Operation, RevocationCheck, RevocationResult
from sidecar.stores.keys import revocation_key
from tests.identity_tokens import (
    AUDIENCE,
    ISSUER,
    FakeClock,
    claims,
    ec_key,
    hostile_tokens,
    jwks_document,
    mint,
    public_jwk,
    request,
    rsa_key,
)

API_KEY = "sk_test_4f1c2a9e7b"
OTHER_KEY = "sk_test_unknown"
BEARER = 'Bearer realm="abuse-sidecar"'
BEARER_INVALID = 'Bearer realm="abuse-sidecar", error="invalid_token"'
APIKEY = 'ApiKey realm="abuse-sidecar"'
APIKEY_INVALID = 'ApiKey realm="abuse-sidecar", error="invalid_key"'


def jwt_section(**overrides: Any) -> dict[str, Any]:
    return {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks": jwks_document(public_jwk(rsa_key(), "rsa-1"), public_jwk(ec_key(), "ec-1")),
        "algorithms": ["RS256", "ES256"],
        "revocation": True,
        **overrides,
    }


def api_key_section(**overrides: Any) -> dict[str, Any]:
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    return {
        "in": "header",
        "name": "X-Api-Key",
        "keys": [{"id": "k1", "sha256": digest, "subject": "acme", "plan": "gold"}],
        **overrides,
    }


def build(
    section: dict[str, Any],
    *,
    clock: FakeClock | None = None,
    registry: JwksRegistry | None = None,
    table: SecretKeyTable | None = None,
) -> IdentityStep:
    return build_identity_step(
        "shop/reviews",
        IdentitySpec.model_validate(section),
        jwks=registry or JwksRegistry(),
        secret_keys=table or SecretKeyTable(),
        clock=clock or FakeClock(),
    )


def run(step: IdentityStep, ctx: RequestContext) -> tuple[Deny | None, list[Operation]]:
    ops: list[Operation] = []
    return step.evaluate(ctx, ops), ops


def token(clock: FakeClock | None = None, **extra: Any) -> str:
    now = (clock or FakeClock()).now()
    return mint(rsa_key(), claims(now=now, **extra), kid="rsa-1")


def report(ctx: RequestContext) -> dict[str, Any]:
    assert ctx.reports, "the step must explain itself"
    return ctx.reports[-1].as_dict()


# -- outcomes -------------------------------------------------------------------------


def test_valid_jwt_sets_subject_and_plan() -> None:
    clock = FakeClock()
    step = build({"required": True, "jwt": jwt_section(revocation=False)}, clock=clock)
    ctx = request({"authorization": f"Bearer {token(clock, plan='gold')}"})
    deny, ops = run(step, ctx)
    assert deny is None
    assert ops == []
    assert (ctx.subject, ctx.plan, ctx.api_key_id) == ("alice", "gold", None)
    assert report(ctx) == {
        "step": "identity",
        "verdict": "allow",
        "credential": "jwt",
        "subject": "alice",
        "plan": "gold",
        "jti_checked": False,
    }


def test_bearer_scheme_is_case_insensitive() -> None:
    clock = FakeClock()
    step = build({"required": True, "jwt": jwt_section()}, clock=clock)
    ctx = request({"authorization": f"bEaReR {token(clock)}"})
    assert run(step, ctx)[0] is None
    assert ctx.subject == "alice"


def test_missing_credentials_when_required() -> None:
    step = build({"required": True, "jwt": jwt_section(), "apiKey": api_key_section()})
    ctx = request({"authorization": "Basic YWxpY2U6cGFzcw=="})  # another scheme: not ours
    deny, _ = run(step, ctx)
    assert deny is not None
    assert deny.reason is Reason.MISSING_CREDENTIALS
    assert deny.status == 401
    assert deny.headers == (("WWW-Authenticate", BEARER), ("WWW-Authenticate", APIKEY))
    assert report(ctx)["verdict"] == "deny"


def test_anonymous_when_not_required() -> None:
    step = build({"required": False, "jwt": jwt_section(), "apiKey": api_key_section()})
    ctx = request()
    deny, ops = run(step, ctx)
    assert (deny, ops, ctx.subject, ctx.plan) == (None, [], None, None)
    assert report(ctx)["credential"] is None


def test_invalid_jwt_is_401_even_when_not_required() -> None:
    step = build({"required": False, "jwt": jwt_section()})
    ctx = request({"authorization": "Bearer not-a-token"})
    deny, _ = run(step, ctx)
    assert deny is not None
    assert deny.reason is Reason.INVALID_CREDENTIALS
    assert deny.headers == (("WWW-Authenticate", BEARER_INVALID),)
    assert report(ctx)["failure"] == "malformed"
    assert ctx.subject is None


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer    "])
def test_empty_bearer_token_is_presented_and_invalid(value: str) -> None:
    step = build({"required": False, "jwt": jwt_section()})
    deny, _ = run(step, request({"authorization": value}))
    assert deny is not None
    assert deny.reason is Reason.INVALID_CREDENTIALS


def test_invalid_credential_wins_over_a_valid_one() -> None:
    clock = FakeClock()
    step = build({"jwt": jwt_section(), "apiKey": api_key_section()}, clock=clock)
    # Valid API key, invalid token.
    deny, _ = run(step, request({"x-api-key": API_KEY, "authorization": "Bearer a.b.c"}))
    assert deny is not None
    assert deny.reason is Reason.INVALID_CREDENTIALS
    assert deny.headers == (("WWW-Authenticate", BEARER_INVALID),)
    # Valid token, invalid API key.
    ctx = request({"x-api-key": OTHER_KEY, "authorization": f"Bearer {token(clock)}"})
    deny, _ = run(step, ctx)
    assert deny is not None
    assert deny.reason is Reason.INVALID_CREDENTIALS
    assert deny.headers == (("WWW-Authenticate", APIKEY_INVALID),)
    assert ctx.subject is None


def test_jwt_subject_takes_precedence_and_api_key_still_identifies_the_key() -> None:
    clock = FakeClock()
    step = build({"jwt": jwt_section(revocation=False), "apiKey": api_key_section()}, clock=clock)
    ctx = request({"x-api-key": API_KEY, "authorization": f"Bearer {token(clock)}"})
    assert run(step, ctx)[0] is None
    # The token has no plan claim: the key's plan applies.
    assert (ctx.subject, ctx.plan, ctx.api_key_id) == ("alice", "gold", "k1")
    assert report(ctx)["credential"] == "jwt"


def test_api_key_in_header() -> None:
    step = build({"required": True, "apiKey": api_key_section()})
    ctx = request({"X-API-KEY": API_KEY})
    assert run(step, ctx)[0] is None
    assert (ctx.subject, ctx.plan, ctx.api_key_id) == ("acme", "gold", "k1")
    assert report(ctx) == {
        "step": "identity",
        "verdict": "allow",
        "credential": "api_key",
        "subject": "acme",
        "plan": "gold",
        "jti_checked": False,
    }
    deny, _ = run(step, request({"x-api-key": OTHER_KEY}))
    assert deny is not None
    assert deny.reason is Reason.INVALID_CREDENTIALS
    assert deny.headers == (("WWW-Authenticate", APIKEY_INVALID),)
    deny, _ = run(step, request())
    assert deny is not None
    assert deny.headers == (("WWW-Authenticate", APIKEY),)


def test_comma_joined_header_is_one_invalid_key() -> None:
    step = build({"apiKey": api_key_section()})
    deny, _ = run(step, request({"x-api-key": f"{OTHER_KEY},{API_KEY}"}))
    assert deny is not None
    assert deny.reason is Reason.INVALID_CREDENTIALS


def test_api_key_in_query() -> None:
    step = build({"required": True, "apiKey": api_key_section(**{"in": "query", "name": "key"})})
    ctx = request(query=f"page=2&key={API_KEY}")
    assert run(step, ctx)[0] is None
    assert ctx.subject == "acme"
    # The header is not where this policy looks.
    deny, _ = run(step, request({"key": API_KEY}))
    assert deny is not None
    assert deny.reason is Reason.MISSING_CREDENTIALS
    deny, _ = run(step, request(query=f"key={OTHER_KEY}&key={API_KEY}"))
    assert deny is not None
    assert deny.reason is Reason.INVALID_CREDENTIALS
    deny, _ = run(step, request(query="key="))
    assert deny is not None
    assert deny.reason is Reason.INVALID_CREDENTIALS


def test_api_keys_from_secrets() -> None:
    table = SecretKeyTable()
    table.put(
        "shop", "partner", SecretApiKey.from_key("sk_partner", "partner", "silver", {"a": "1"})
    )
    section = api_key_section(secretSelector={"matchLabels": {"a": "1"}})
    step = build({"required": True, "apiKey": section}, table=table)
    ctx = request({"x-api-key": "sk_partner"})
    assert run(step, ctx)[0] is None
    assert (ctx.subject, ctx.plan, ctx.api_key_id) == ("partner", "silver", "shop/partner")


def test_mtls_principal_is_a_credential_only_when_enabled() -> None:
    principal = "spiffe://cluster.local/ns/shop/sa/web"
    step = build({"required": True, "mtls": True})
    ctx = request(principal=principal)
    assert run(step, ctx)[0] is None
    assert (ctx.subject, report(ctx)["credential"]) == (principal, "mtls")
    deny, _ = run(step, request())
    assert deny is not None
    assert deny.reason is Reason.MISSING_CREDENTIALS
    off = build({"required": True, "apiKey": api_key_section()})
    deny, _ = run(off, request(principal=principal))
    assert deny is not None
    assert deny.reason is Reason.MISSING_CREDENTIALS


# -- revocation -----------------------------------------------------------------------


def test_revocation_check_for_tokens_with_jti() -> None:
    clock = FakeClock()
    step = build({"required": True, "jwt": jwt_section()}, clock=clock)
    ctx = request({"authorization": f"Bearer {token(clock, jti='t-42')}"})
    deny, ops = run(step, ctx)
    assert deny is None
    assert ops == [RevocationCheck(revocation_key("t-42"))]
    assert report(ctx)["jti_checked"] is True

    assert step.settle(ctx, [RevocationResult(revoked=False)]) is None
    assert step.settle(ctx, [None]) is None  # the store stopped earlier
    revoked = step.settle(ctx, [RevocationResult(revoked=True)])
    assert revoked is not None
    assert revoked.reason is Reason.REVOKED_CREDENTIALS
    assert revoked.status == 401
    assert revoked.headers == (("WWW-Authenticate", BEARER_INVALID),)
    assert report(ctx) | {"subject": None} == {
        "step": "identity",
        "verdict": "deny",
        "credential": "jwt",
        "subject": None,
        "plan": None,
        "jti_checked": True,
        "failure": "revoked",
    }


def test_no_revocation_lookup_without_jti_or_when_off() -> None:
    clock = FakeClock()
    step = build({"jwt": jwt_section()}, clock=clock)
    assert run(step, request({"authorization": f"Bearer {token(clock)}"}))[1] == []
    off = build({"jwt": jwt_section(revocation=False)}, clock=clock)
    assert run(off, request({"authorization": f"Bearer {token(clock, jti='x')}"}))[1] == []
    assert step.settle(request(), []) is None


# -- hostile tokens through the step ----------------------------------------------------


def test_every_hostile_token_is_invalid_credentials_and_nothing_leaks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    step = build({"required": True, "jwt": jwt_section()}, clock=clock)
    catalogue = hostile_tokens(
        rsa_key(), "rsa-1", attacker_url="http://127.0.0.1:9", now=clock.now()
    )
    for name, hostile in catalogue.items():
        ctx = request({"authorization": f"Bearer {hostile}"})
        deny, ops = run(step, ctx)
        assert deny is not None, name
        assert ops == [], name
        assert deny.reason is Reason.INVALID_CREDENTIALS, name
        assert deny.headers == (("WWW-Authenticate", BEARER_INVALID),), name
        assert ctx.subject is None, name
        shown = f"{deny!r} {ctx.reports!r} {step!r}"
        for part in hostile.split("."):
            if len(part) >= 8:
                assert part not in shown, name
                assert part not in caplog.text, name


def test_api_keys_never_reach_reports_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    step = build({"apiKey": api_key_section()})
    for presented in (API_KEY, OTHER_KEY):
        ctx = request({"x-api-key": presented})
        deny, _ = run(step, ctx)
        shown = f"{deny!r} {ctx.reports!r} {step!r} {ctx.subject} {ctx.api_key_id}"
        assert presented not in shown
    assert API_KEY not in caplog.text
    assert OTHER_KEY not in caplog.text


# -- peek_subject -------------------------------------------------------------------------


def test_peek_subject_is_verified_and_side_effect_free() -> None:
    clock = FakeClock()
    step = build({"required": True, "jwt": jwt_section(), "apiKey": api_key_section()}, clock=clock)
    ctx = request({"authorization": f"Bearer {token(clock, subject='mallory')}"})
    assert step.peek_subject(ctx) == "mallory"
    assert (ctx.subject, ctx.reports) == (None, [])
    assert step.peek_subject(request({"x-api-key": API_KEY})) == "acme"
    assert step.peek_subject(request()) is None
    # A forged token naming a victim must not let an attacker get the victim blocked.
    forged = mint(rsa_key(7), claims(now=clock.now(), subject="victim"), kid="rsa-1")
    assert step.peek_subject(request({"authorization": f"Bearer {forged}"})) is None
    assert step.peek_subject(request({"x-api-key": OTHER_KEY})) is None


# -- building -----------------------------------------------------------------------------


def test_bad_inline_jwks_names_the_field() -> None:
    bad = jwt_section(jwks={"keys": [public_jwk(rsa_key(), "a"), {"kty": "oct", "k": "c2VjcmV0"}]})
    with pytest.raises(IdentityConfigError) as caught:
        build({"jwt": bad})
    assert caught.value.field_path == "spec.identity.jwt.jwks.keys[1].kty"
    assert isinstance(caught.value, ValueError)
    private = {**public_jwk(rsa_key(), "a"), "d": "AQAB"}
    with pytest.raises(IdentityConfigError, match=r"keys\[0\]\.d: private key material"):
        build({"jwt": jwt_section(jwks={"keys": [private]})})


def test_inline_jwks_must_serve_an_allowed_algorithm() -> None:
    only_ec = jwt_section(jwks=jwks_document(public_jwk(ec_key(), "e")), algorithms=["RS256"])
    with pytest.raises(IdentityConfigError, match="no key can verify"):
        build({"jwt": only_ec})


def test_required_without_any_credential_is_a_configuration_error() -> None:
    with pytest.raises(IdentityConfigError, match="no credential is configured"):
        build({"required": True})


def test_policies_share_one_jwks_cache_per_uri() -> None:
    registry = JwksRegistry()
    section = {"jwt": jwt_section(jwks=None, jwksUri="https://idp.test/jwks.json")}
    first = build(section, registry=registry)
    second = build(section, registry=registry)
    assert [c.uri for c in registry.caches()] == ["https://idp.test/jwks.json"]
    assert first._jwt is not None
    assert second._jwt is not None
    assert first._jwt.source is second._jwt.source


async def test_revoked_jti_through_the_in_process_store() -> None:
    from sidecar.stores.base import StorePlan
    from sidecar.stores.memory import MemoryStore

    clock = FakeClock()
    store = MemoryStore()
    step = build({"required": True, "jwt": jwt_section()}, clock=clock)
    bearer = {"authorization": f"Bearer {token(clock, jti='j-9')}"}
    outcomes = []
    for revoke_first in (False, True):
        if revoke_first:
            await store.revoke("j-9", 60)
        ctx = request(bearer)
        deny, ops = run(step, ctx)
        assert deny is None
        results = await store.execute(StorePlan(tuple(ops)))
        settled = step.settle(ctx, results)
        outcomes.append(None if settled is None else settled.reason)
    assert outcomes == [None, Reason.REVOKED_CREDENTIALS]


def test_building_without_serving_resources_for_validate() -> None:
    section = {"jwt": jwt_section(jwks=None, jwksUri="https://idp.test/jwks.json")}
    step = build_identity_step(
        "shop/reviews", IdentitySpec.model_validate(section), jwks=None, secret_keys=None
    )
    deny, _ = run(step, request({"authorization": f"Bearer {token()}"}))
    assert deny is not None  # no keys were ever fetched: nothing verifies
    assert deny.reason is Reason.INVALID_CREDENTIALS
