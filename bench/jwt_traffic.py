"""Bearer tokens for the ``jwt`` and ``jwt-fresh`` benchmark scenarios.

Tokens are signed with ``bench/keys/jwt-bench-rs256.pem``, whose public half is
inline in ``bench/policies/jwt.yaml``, and minted when wrk's script is written
(each run), so they never expire in a checked-in file.

- ``jwt``: one token on every request, as real clients send it until it expires:
  after the first request the sidecar answers from its verified-token cache.
- ``jwt-fresh``: every request carries a token the sidecar has not seen recently,
  so each one is parsed and RSA-verified. ``FRESH_TOKENS`` tokens are signed up
  front and cycled by wrk. The cache keeps 10,000 tokens (LRU), so the ring is
  split into one segment per wrk thread (two: the runner's load phase; its
  latency phase uses one), each of 10,000 tokens: a token comes back only after
  at least 20,000 other verifications, long evicted. Each thread records how far
  it got in a file beside the script, so the next wrk run (warm-up, load,
  latency, next round) continues instead of replaying tokens still in the cache.
"""

from __future__ import annotations

import time
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import jwt as pyjwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.utils import base64url_decode

BENCH_DIR = Path(__file__).resolve().parent
SIGNING_KEY = BENCH_DIR / "keys" / "jwt-bench-rs256.pem"
POLICY = BENCH_DIR / "policies" / "jwt.yaml"
FRESH_TOKENS = 20_000
LIFETIME_S = 6 * 3600
"""Longer than any benchmark run."""
SEGMENTS = 2
"""Disjoint token segments, one per wrk thread (more threads share segments)."""


@cache
def _policy_jwt() -> dict[str, Any]:
    document = yaml.safe_load(POLICY.read_text())
    jwt_spec: dict[str, Any] = document["spec"]["identity"]["jwt"]
    return jwt_spec


@cache
def signing_key() -> rsa.RSAPrivateKey:
    """The benchmark key, checked against the policy so the two cannot drift apart."""
    key = serialization.load_pem_private_key(SIGNING_KEY.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SystemExit(f"{SIGNING_KEY}: not an RSA private key")
    (jwk,) = _policy_jwt()["jwks"]["keys"]
    n = key.public_key().public_numbers().n
    if base64url_decode(jwk["n"]) != n.to_bytes((n.bit_length() + 7) // 8, "big"):
        raise SystemExit(f"{SIGNING_KEY} does not match the key inline in {POLICY}")
    return key


def token(subject: str, *, now: float | None = None) -> str:
    """A token ``bench/jwt`` accepts, for ``subject``, with a unique ``jti``."""
    spec = _policy_jwt()
    (jwk,) = spec["jwks"]["keys"]
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": spec["issuer"],
        "aud": spec["audiences"][0],
        "sub": subject,
        "plan": "gold",
        "iat": issued,
        "exp": issued + LIFETIME_S,
        "jti": uuid.uuid4().hex,
    }
    return pyjwt.encode(claims, signing_key(), algorithm="RS256", headers={"kid": jwk["kid"]})


def same_token_lua() -> str:
    """wrk Lua for ``jwt``: one Authorization header on every request."""
    return f'wrk.headers["Authorization"] = "Bearer {token("bench-client")}"\n'


def fresh_tokens_lua(count: int = FRESH_TOKENS) -> str:
    """wrk Lua for ``jwt-fresh``: ``count`` tokens, a different one per request."""
    if count % SEGMENTS:
        raise ValueError(f"count must be a multiple of {SEGMENTS}")
    now = time.time()
    # JWTs are base64url and dots: no "]==]" can end the long string early.
    tokens = "\n".join(token(f"client-{index}", now=now) for index in range(count))
    return _FRESH_LUA.replace("@TOKENS@", tokens).replace("@SEGMENTS@", str(SEGMENTS))


_FRESH_LUA = """
local tokens = {}
for t in ([==[
@TOKENS@
]==]):gmatch("[^\\n]+") do tokens[#tokens + 1] = t end
local segments = @SEGMENTS@
local segment_size = math.floor(#tokens / segments)
-- Position files live beside this script (wrk loads it with luaL_dofile).
local script_dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local claimed_ahead = 64

local next_thread = 0
function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
end

local first, position, state_path, headers

local function claim(upto)
  local f = io.open(state_path, "w")
  if f then f:write(tostring(upto)); f:close() end
end

function init(args)
  local slot = (thread_index or 0) % segments
  first = slot * segment_size
  state_path = script_dir .. "jwt-fresh.position." .. slot
  position = 0
  local f = io.open(state_path, "r")
  if f then position = tonumber(f:read("*l")) or 0; f:close() end
  headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
end

function request()
  -- Claim the next block before using it, so a later run starts after every
  -- token this one may have sent, at the cost of one small write per block.
  if position % claimed_ahead == 0 then claim(position + claimed_ahead) end
  headers["Authorization"] = "Bearer " .. tokens[first + position % segment_size + 1]
  position = position + 1
  return wrk.format(nil, nil, headers)
end
"""
