"""Test infrastructure that starts real processes: Envoy, the sidecar, helpers.

- ``ports``: free loopback ports (``free_port``, ``consecutive_free_ports`` for ``--workers``).
- ``processes``: start/stop a child with its log captured; wait for a port or an HTTP 200.
- ``envoy``: real Envoy with a ``sidecar.envoy_config`` rendering; admin stats per endpoint.
- ``sidecar``: ``abuse-sidecar serve`` as a subprocess, ready once ``/readyz`` says 200.
- ``noop_authz``: the do-nothing ext_authz server (benchmark ceiling, harness probe).
- ``upstream``: the echoing sample application.
- ``stack``: one test's set of the above, stopped together (the ``stack`` fixture).
"""
