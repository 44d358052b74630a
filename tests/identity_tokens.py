"""Keys, tokens, JWK Sets and a JWKS server for identity tests (unit and end-to-end).

Valid tokens are minted with PyJWT, an implementation independent of ours, so a
passing test means two implementations agree. Hostile tokens are assembled by
hand (``forge``) because no well-behaved library will produce them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sidecar.identity.b64 import b64url_encode

ISSUER = "https://idp.test"
AUDIENCE = "reviews-api"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_CURVES: Mapping[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}


@cache
def rsa_key(index: int = 0, bits: int = 2048) -> rsa.RSAPrivateKey:
    """A process-wide RSA key; different ``index`` values give different keys."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def ec_key(index: int = 0, curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVES[curve][0])


@cache
def ed25519_key(index: int = 0) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _int_b64(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(length, "big"))


def public_jwk(key: PrivateKey, kid: str | None = "k1", alg: str | None = None) -> dict[str, Any]:
    """The public JWK of ``key`` (RSA, EC or Ed25519), with ``kid``/``alg`` when given."""
    jwk: dict[str, Any]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        jwk = {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        numbers_ec = key.public_key().public_numbers()
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
        size = _CURVES[crv][1]
        jwk = {
            "kty": "EC",
            "crv": crv,
            "x": _int_b64(numbers_ec.x, size),
            "y": _int_b64(numbers_ec.y, size),
        }
    else:
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    jwk["use"] = "sig"
    return jwk


def jwks_document(*jwks: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(jwks)}


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The public key as SubjectPublicKeyInfo PEM: what a key-confusion attacker HMACs with."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(
    *,
    issuer: str = ISSUER,
    audience: str | list[str] | None = AUDIENCE,
    subject: str = "alice",
    lifetime_s: float = 300,
    now: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Standard claims valid for ``lifetime_s`` from ``now``; ``extra`` adds or overrides
    (pass ``exp=None`` to drop ``exp``)."""
    at = time.time() if now is None else now
    body: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "iat": int(at),
        "exp": int(at + lifetime_s),
    }
    if audience is not None:
        body["aud"] = audience
    for name, value in extra.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def mint(
    key: PrivateKey,
    body: Mapping[str, Any],
    *,
    alg: str = "RS256",
    kid: str | None = "k1",
    headers: Mapping[str, Any] | None = None,
) -> str:
    """A correctly signed token (PyJWT)."""
    header: dict[str, Any] = dict(headers or {})
    if kid is not None:
        header["kid"] = kid
    return pyjwt.encode(dict(body), key, algorithm=alg, headers=header)


def segment(value: Any) -> str:
    """base64url of compact JSON (or of raw bytes/str, as given)."""
    if isinstance(value, bytes):
        return b64url_encode(value)
    if isinstance(value, str):
        return b64url_encode(value.encode())
    return b64url_encode(json.dumps(value, separators=(",", ":")).encode())


def forge(header: Any, body: Any, signature: bytes = b"") -> str:
    """Assemble a token by hand; ``header``/``body`` may be JSON values or raw text."""
    return f"{segment(header)}.{segment(body)}.{b64url_encode(signature)}"


def sign_with(key: PrivateKey, header: Any, body: Any, alg: str = "RS256") -> str:
    """Sign an arbitrary (possibly hostile) header and body with a real key, so that
    only the header or body is what makes the token invalid."""
    from jwt.algorithms import get_default_algorithms

    signing_input = f"{segment(header)}.{segment(body)}"
    algorithm = get_default_algorithms()[alg]
    signature = algorithm.sign(signing_input.encode(), key)
    return f"{signing_input}.{b64url_encode(signature)}"


def hmac_token(secret: bytes, header: Mapping[str, Any], body: Any, alg: str = "HS256") -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{segment(dict(header))}.{segment(body)}"
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url_encode(signature)}"


def altered_signature(token: str) -> str:
    """Flip one character in the middle of the signature."""
    head, _, signature = token.rpartition(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return f"{head}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"


def hostile_tokens(
    key: rsa.RSAPrivateKey,
    kid: str,
    *,
    attacker_url: str,
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
    now: float | None = None,
) -> dict[str, str]:
    """The catalogue of tokens that must each be refused by a policy trusting ``key``
    under ``kid`` for ``issuer``/``audience`` with algorithms RS256 (SECURITY-ANCHORS §1).

    ``attacker_url`` is where ``jku``/``x5u`` point: a verifier that fetches it is broken.
    """
    at = time.time() if now is None else now
    good = claims(issuer=issuer, audience=audience, now=at)
    attacker = rsa_key(99)
    attacker_jwk = public_jwk(attacker, kid=kid)
    rs256 = {"alg": "RS256", "typ": "JWT", "kid": kid}
    catalogue: dict[str, str] = {
        "expired": mint(key, claims(issuer=issuer, audience=audience, now=at - 7200), kid=kid),
        "nbf_in_future": mint(key, {**good, "nbf": int(at + 3600)}, kid=kid),
        "wrong_issuer": mint(key, {**good, "iss": "https://evil.test"}, kid=kid),
        "issuer_prefix": mint(key, {**good, "iss": issuer + ".evil.test"}, kid=kid),
        "wrong_audience": mint(key, {**good, "aud": "other-api"}, kid=kid),
        "no_exp": mint(key, claims(issuer=issuer, audience=audience, now=at, exp=None), kid=kid),
        "signature_altered": altered_signature(mint(key, good, kid=kid)),
        "signature_stripped": mint(key, good, kid=kid).rpartition(".")[0] + ".",
        "signed_by_attacker": mint(attacker, good, kid=kid),
        "hs256_with_public_pem": hmac_token(public_pem(key), {**rs256, "alg": "HS256"}, good),
        "hs256_with_public_jwk": hmac_token(
            json.dumps(public_jwk(key, kid=kid)).encode(), {**rs256, "alg": "HS256"}, good
        ),
        "kid_path_traversal": hmac_token(
            b"", {"alg": "HS256", "kid": "../../../../../../dev/null"}, good
        ),
        "kid_path_traversal_rs256": mint(attacker, good, kid="../../../../../../dev/null"),
        "kid_sql_injection": hmac_token(
            b"1", {"alg": "HS256", "kid": "x' UNION SELECT '1';--"}, good
        ),
        "kid_sql_injection_rs256": mint(attacker, good, kid="x' UNION SELECT '1';--"),
        "jku_elsewhere": mint(
            attacker, good, kid="attacker", headers={"jku": f"{attacker_url}/jwks.json"}
        ),
        "x5u_elsewhere": mint(
            attacker, good, kid="attacker", headers={"x5u": f"{attacker_url}/cert.pem"}
        ),
        "jku_same_kid": mint(attacker, good, kid=kid, headers={"jku": f"{attacker_url}/jwks.json"}),
        "embedded_jwk": mint(attacker, good, kid=kid, headers={"jwk": attacker_jwk}),
        "unknown_kid": mint(key, good, kid="no-such-kid"),
        "one_megabyte": forge(rs256, good) + "A" * (1 << 20),
        "garbage": "this is not a token",
        "non_base64": "@@@.###.$$$",
        "header_not_object": sign_with(key, [rs256], good),
        "header_is_string": sign_with(key, '"RS256"', good),
        "payload_not_object": sign_with(key, rs256, [good]),
        "duplicate_alg": sign_with(
            key, '{"alg":"none","kid":' + json.dumps(kid) + ',"alg":"RS256"}', good
        ),
        "crit_unknown": sign_with(key, {**rs256, "crit": ["exp"], "exp": 1}, good),
        "b64_false": sign_with(key, {**rs256, "crit": ["b64"], "b64": False}, good),
        "jwe_shaped": forge({"alg": "RSA-OAEP", "enc": "A256GCM"}, "x") + ".iv.tag",
        "empty": "",
    }
    for variant in ("none", "None", "NONE", "nOnE", "NoNe"):
        header = {"alg": variant, "typ": "JWT", "kid": kid}
        catalogue[f"alg_{variant}"] = forge(header, good)
        catalogue[f"alg_{variant}_with_signature"] = forge(header, good, b"\x00" * 32)
    return catalogue


class JwksServer:
    """A real HTTP server on 127.0.0.1 serving a JWK Set that tests can rotate.

    Every request is recorded (``hits``, by path) so tests can prove what was and
    was not fetched. ``fail_with(503)`` makes every request fail until
    ``fail_with(None)``.
    """

    def __init__(self, document: Mapping[str, Any] | None = None, path: str = "/jwks.json") -> None:
        self.path = path
        self._document: bytes = json.dumps(document or {"keys": []}).encode()
        self._cache_control: str | None = None
        self._failure: int | None = None
        self._lock = threading.Lock()
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits[self.path] = server.hits.get(self.path, 0) + 1
                    failure = server._failure
                    document = server._document
                    cache_control = server._cache_control
                if failure is not None:
                    self.send_response(failure)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if self.path.partition("?")[0] != server.path:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(document)))
                if cache_control is not None:
                    self.send_header("cache-control", cache_control)
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def fetches(self, path: str | None = None) -> int:
        with self._lock:
            return self.hits.get(path or self.path, 0)

    def total_hits(self) -> int:
        with self._lock:
            return sum(self.hits.values())

    def set_document(self, document: Mapping[str, Any], cache_control: str | None = None) -> None:
        with self._lock:
            self._document = json.dumps(document).encode()
            self._cache_control = cache_control

    def fail_with(self, status: int | None) -> None:
        with self._lock:
            self._failure = status

    def start(self) -> JwksServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def jwks_server(document: Mapping[str, Any] | None = None) -> Iterator[JwksServer]:
    server = JwksServer(document).start()
    try:
        yield server
    finally:
        server.stop()


class FakeClock:
    """A ``sidecar.clock.Clock`` that moves only when told to."""

    def __init__(self, now: float | None = None) -> None:
        self.wall = time.time() if now is None else now
        self.mono = 1000.0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def request(
    headers: Mapping[str, str] | None = None,
    *,
    query: str = "",
    principal: str = "",
    path: str = "/",
) -> Any:
    """A ``RequestContext`` with explanation on, as the identity step sees one."""
    from sidecar.pipeline.context import RequestContext

    return RequestContext(
        method="GET",
        path=path,
        raw_path=path + (f"?{query}" if query else ""),
        query=query,
        host="api.example.com",
        headers={name.lower(): value for name, value in (headers or {}).items()},
        body=b"",
        source_ip="192.0.2.1",
        source_principal=principal,
        explain=True,
    )


def jwt_rules(**overrides: Any) -> Any:
    """``JwtRules`` for ISSUER/AUDIENCE, RS256+ES256, 30 s leeway; fields overridable."""
    import dataclasses

    from sidecar.identity.jwt import JwtRules

    base = JwtRules(
        issuer=ISSUER,
        audiences=frozenset({AUDIENCE}),
        algorithms=frozenset({"RS256", "ES256"}),
        leeway_s=30,
        subject_claim="sub",
        plan_claim="plan",
    )
    return dataclasses.replace(base, **overrides)
