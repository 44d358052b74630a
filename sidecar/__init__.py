"""abuse-sidecar: an Envoy ext_authz service that stops API abuse.

The public surface is the command line and the contract (docs/, CONTRACT.md);
the modules below are internal.
"""

__version__ = "0.1.0"
