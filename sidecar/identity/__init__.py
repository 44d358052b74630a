"""Credential verification, with no knowledge of the pipeline.

- ``api_keys``: SHA-256 digest index of inline keys and Kubernetes Secrets.
- ``jwt``: compact-JWS verification with an allowlist, strict claims and a
  verified-token cache; ``jwk``: trusted keys parsed once; ``jwks``: key sets
  fetched from ``jwksUri`` and refreshed in the background.
- ``mtls``: the client-certificate principal Envoy verified.
- ``revocation``: ``jti`` lookups for the store plan.
- ``errors``: why a credential was refused, as a type tree.

``sidecar.steps.identity`` turns these into the pipeline's identity step.
"""

from sidecar.identity.api_keys import ApiKeyIndex, SecretApiKey, SecretKeyTable
from sidecar.identity.errors import InvalidCredential
from sidecar.identity.jwks import JwksCache, JwksRegistry, JwksSettings
from sidecar.identity.jwt import JwtRules, JwtVerifier

__all__ = [
    "ApiKeyIndex",
    "InvalidCredential",
    "JwksCache",
    "JwksRegistry",
    "JwksSettings",
    "JwtRules",
    "JwtVerifier",
    "SecretApiKey",
    "SecretKeyTable",
]
