"""Process-wide objects that compiled policies share (databases, key caches).

They outlive any one policy: a recompiled policy reuses the same GeoIP readers,
JWKS caches and Secret-fed key table instead of opening new ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Resources:
    geoip: Any = None  # sidecar.iprep.mmdb.GeoIpDatabases | None
    jwks: Any = None  # sidecar.identity.jwks.JwksRegistry | None
    secret_keys: Any = None  # sidecar.identity.api_keys.SecretKeyTable | None
    notifier: Any = None  # sidecar.cohorts.notify.Notifier | None
