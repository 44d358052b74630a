"""The identity step: who is calling (``subject``, ``plan``), from the credentials
the policy accepts (contract §3 ``spec.identity``, §4 outcomes).

Rules, in this order:

1. A credential that is presented and invalid denies (``invalid_credentials``),
   even when another presented credential is valid. Only credential kinds the
   policy configures count: a bearer token on an API-key-only policy is the
   upstream's business, not ours.
2. No credential presented: ``missing_credentials`` when ``required``, else the
   request goes on anonymously (no subject).
3. Otherwise the subject comes from the JWT, else the API key, else the mTLS
   principal; the plan from the first of those that carries one. A token with a
   ``jti`` on a ``revocation: true`` policy adds one store lookup, settled as
   ``revoked_credentials``.

Denials carry ``WWW-Authenticate`` for the scheme at fault and never say why a
credential failed; the explanation (``check``) names the failure for operators.
No credential value is ever put in a report, a Deny, a log line or a repr.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.errors import SectionError
from sidecar.identity.api_keys import ApiKeyIdentity, ApiKeyIndex, SecretKeyTable
from sidecar.identity.errors import InvalidCredential, MalformedApiKey
from sidecar.identity.jwk import JwkError, parse_jwks
from sidecar.identity.jwks import JwksCache, JwksRegistry
from sidecar.identity.jwt import (
    DEFAULT_CACHE_SIZE,
    JwtRules,
    JwtVerifier,
    KeySource,
    StaticKeys,
    VerifiedToken,
)
from sidecar.identity.mtls import principal_subject
from sidecar.identity.revocation import is_revoked, revocation_check
from sidecar.model.policy import IdentitySpec, JwtSpec
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.verdict import Deny, Reason
from sidecar.stores.base import Operation, OpResult

STEP: Final = "identity"
REALM: Final = "abuse-sidecar"
CHALLENGE_HEADER: Final = "WWW-Authenticate"

Credential = Literal["jwt", "api_key", "mtls"]


class IdentityConfigError(SectionError):
    """A part of ``spec.identity`` that cannot be built; names the field."""


@dataclass(frozen=True, slots=True)
class Established:
    """What the presented credentials established (all valid, or none presented)."""

    credential: Credential | None
    subject: str | None
    plan: str | None
    api_key_id: str | None
    jti: str | None


@dataclass(frozen=True, slots=True)
class Refused:
    """A presented credential that is invalid; ``error`` is for the explanation only."""

    credential: Credential
    error: InvalidCredential


ANONYMOUS: Final = Established(None, None, None, None, None)


def _challenge(scheme: str, error: str | None = None) -> tuple[str, str]:
    value = f'{scheme} realm="{REALM}"'
    if error is not None:
        value += f', error="{error}"'
    return (CHALLENGE_HEADER, value)


class IdentityStep:
    """Compiled ``spec.identity`` of one policy."""

    name = STEP
    __slots__ = (
        "_api_key_header",
        "_api_key_query",
        "_api_keys",
        "_deny_invalid_api_key",
        "_deny_invalid_jwt",
        "_deny_missing",
        "_deny_revoked",
        "_jwt",
        "_mtls",
        "_required",
        "_revocation",
        "policy_id",
    )

    def __init__(
        self,
        policy_id: str,
        *,
        required: bool,
        api_keys: ApiKeyIndex | None = None,
        api_key_in: Literal["header", "query"] = "header",
        api_key_name: str = "x-api-key",
        jwt: JwtVerifier | None = None,
        revocation: bool = False,
        mtls: bool = False,
    ) -> None:
        self.policy_id = policy_id
        self._required = required
        self._api_keys = api_keys
        self._api_key_header = api_key_name.lower() if api_key_in == "header" else None
        self._api_key_query = api_key_name if api_key_in == "query" else None
        self._jwt = jwt
        self._revocation = revocation and jwt is not None
        self._mtls = mtls

        missing: list[tuple[str, str]] = []
        if jwt is not None:
            missing.append(_challenge("Bearer"))
        if api_keys is not None:
            missing.append(_challenge("ApiKey"))
        if mtls or not missing:
            # No HTTP scheme exists for client certificates; the header is still
            # required on every 401 (RFC 9110 §15.5.2) and names what is expected.
            missing.append(_challenge("mTLS"))
        self._deny_missing = Deny(
            Reason.MISSING_CREDENTIALS,
            "identity.required",
            "This API requires credentials.",
            headers=tuple(missing),
        )
        self._deny_invalid_jwt = Deny(
            Reason.INVALID_CREDENTIALS,
            "identity.jwt",
            "The credentials presented are not valid.",
            headers=(_challenge("Bearer", "invalid_token"),),
        )
        self._deny_invalid_api_key = Deny(
            Reason.INVALID_CREDENTIALS,
            "identity.apiKey",
            "The credentials presented are not valid.",
            headers=(_challenge("ApiKey", "invalid_key"),),
        )
        self._deny_revoked = Deny(
            Reason.REVOKED_CREDENTIALS,
            "identity.jwt.revocation",
            "The credentials presented have been revoked.",
            headers=(_challenge("Bearer", "invalid_token"),),
        )

    def __repr__(self) -> str:
        kinds = [
            kind
            for kind, on in (("jwt", self._jwt), ("api_key", self._api_keys), ("mtls", self._mtls))
            if on
        ]
        return f"IdentityStep({self.policy_id!r}, required={self._required}, credentials={kinds})"

    # -- Step protocol -------------------------------------------------------------

    def evaluate(self, ctx: RequestContext, ops: list[Operation]) -> Deny | None:
        outcome = self.resolve(ctx)
        if isinstance(outcome, Refused):
            ctx.report(
                STEP,
                "deny",
                credential=outcome.credential,
                subject=None,
                plan=None,
                jti_checked=False,
                failure=outcome.error.code,
            )
            if outcome.credential == "api_key":
                return self._deny_invalid_api_key
            return self._deny_invalid_jwt
        if outcome.credential is None:
            if self._required:
                ctx.report(
                    STEP, "deny", credential=None, subject=None, plan=None, jti_checked=False
                )
                return self._deny_missing
            if ctx.explain:
                ctx.report(
                    STEP, "allow", credential=None, subject=None, plan=None, jti_checked=False
                )
            return None

        ctx.subject = outcome.subject
        ctx.plan = outcome.plan
        ctx.api_key_id = outcome.api_key_id
        jti_checked = self._revocation and outcome.jti is not None
        if jti_checked:
            assert outcome.jti is not None
            ops.append(revocation_check(outcome.jti))
        if ctx.explain:  # spares building the details on every request
            ctx.report(
                STEP,
                "allow",
                credential=outcome.credential,
                subject=outcome.subject,
                plan=outcome.plan,
                jti_checked=jti_checked,
            )
        return None

    def settle(self, ctx: RequestContext, results: Sequence[OpResult | None]) -> Deny | None:
        if results and is_revoked(results[0]):
            ctx.report(
                STEP,
                "deny",
                credential="jwt",
                subject=ctx.subject,
                plan=ctx.plan,
                jti_checked=True,
                failure="revoked",
            )
            return self._deny_revoked
        return None

    # -- Queries -------------------------------------------------------------------

    def peek_subject(self, ctx: RequestContext) -> str | None:
        """The subject the credentials establish, for steps that run before this one
        (honeypot blocks). Best effort: never denies, never touches ``ctx``, never
        triggers a key refresh; forged or invalid credentials give None."""
        outcome = self.resolve(ctx, refresh_on_unknown_kid=False)
        return outcome.subject if isinstance(outcome, Established) else None

    def resolve(
        self, ctx: RequestContext, *, refresh_on_unknown_kid: bool = True
    ) -> Established | Refused:
        """Check every configured credential kind the request presents."""
        api_key: ApiKeyIdentity | None = None
        if self._api_keys is not None:
            try:
                presented = self._presented_api_key(ctx)
                if presented is not None:
                    api_key = self._api_keys.match(presented)
            except InvalidCredential as exc:
                return Refused("api_key", exc)

        token: VerifiedToken | None = None
        if self._jwt is not None:
            bearer = _bearer_token(ctx.headers)
            if bearer is not None:
                try:
                    token = self._jwt.verify(bearer, refresh_on_unknown_kid=refresh_on_unknown_kid)
                except InvalidCredential as exc:
                    return Refused("jwt", exc)

        principal = principal_subject(ctx.source_principal) if self._mtls else None

        if token is not None:
            plan = token.plan if token.plan is not None else (api_key.plan if api_key else None)
            return Established(
                "jwt", token.subject, plan, api_key.id if api_key else None, token.jti
            )
        if api_key is not None:
            return Established("api_key", api_key.subject, api_key.plan, api_key.id, None)
        if principal is not None:
            return Established("mtls", principal, None, None, None)
        return ANONYMOUS

    def _presented_api_key(self, ctx: RequestContext) -> str | None:
        if self._api_key_header is not None:
            return ctx.headers.get(self._api_key_header)
        assert self._api_key_query is not None
        values = ctx.query_params().get(self._api_key_query)
        if values is None:
            return None
        if len(values) != 1:
            # Two keys in one request are one invalid credential, not two guesses.
            raise MalformedApiKey
        return values[0]


def _bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header (scheme case-insensitive,
    RFC 9110 §11.1); None when the header is absent or uses another scheme. An
    empty token is returned as "" so that it counts as presented and invalid."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip(" ")


def build_identity_step(
    policy_id: str,
    spec: IdentitySpec,
    *,
    jwks: JwksRegistry | None,
    secret_keys: SecretKeyTable | None,
    clock: Clock = SYSTEM_CLOCK,
    token_cache_size: int = DEFAULT_CACHE_SIZE,
) -> IdentityStep:
    """Compile ``spec.identity`` of policy ``ns/name``. All parsing happens here;
    raises ``IdentityConfigError`` (a ValueError) naming the field at fault.

    ``jwks``/``secret_keys`` may be None where nothing is served (``validate``):
    a ``jwksUri`` then gets a cache that never fetches, and no Secret keys exist."""
    if spec.required and spec.api_key is None and spec.jwt is None and not spec.mtls:
        raise IdentityConfigError(
            "spec.identity.required",
            "is true but no credential is configured, so every request would be refused; "
            "add apiKey, jwt or mtls",
        )
    namespace = policy_id.partition("/")[0]

    api_keys: ApiKeyIndex | None = None
    if spec.api_key is not None:
        selector = spec.api_key.secret_selector
        api_keys = ApiKeyIndex(
            spec.api_key.keys,
            namespace=namespace,
            selector=selector.match_labels if selector is not None else None,
            table=secret_keys,
        )

    verifier: JwtVerifier | None = None
    if spec.jwt is not None:
        try:
            rules = JwtRules.from_spec(spec.jwt)
        except ValueError as exc:
            raise IdentityConfigError("spec.identity.jwt.algorithms", str(exc)) from None
        verifier = JwtVerifier(
            rules, _key_source(spec.jwt, rules, jwks), clock=clock, cache_size=token_cache_size
        )

    return IdentityStep(
        policy_id,
        required=spec.required,
        api_keys=api_keys,
        api_key_in=spec.api_key.in_ if spec.api_key is not None else "header",
        api_key_name=spec.api_key.name if spec.api_key is not None else "x-api-key",
        jwt=verifier,
        revocation=spec.jwt.revocation if spec.jwt is not None else False,
        mtls=spec.mtls,
    )


def _key_source(spec: JwtSpec, rules: JwtRules, jwks: JwksRegistry | None) -> KeySource:
    if spec.jwks_uri is not None:
        return jwks.cache_for(spec.jwks_uri) if jwks is not None else JwksCache(spec.jwks_uri)
    assert spec.jwks is not None
    where = "spec.identity.jwt.jwks"
    try:
        keys = parse_jwks({"keys": spec.jwks.keys}, where=where)
    except JwkError as exc:
        raise IdentityConfigError(exc.member, str(exc).removeprefix(f"{exc.member}: ")) from None
    if not any(key.algorithms & rules.algorithms for key in keys.keys):
        usable = sorted({alg for key in keys.keys for alg in key.algorithms})
        raise IdentityConfigError(
            where,
            f"no key can verify the allowed algorithms {sorted(rules.algorithms)}; "
            f"these keys verify {usable}",
        )
    return StaticKeys(keys)
