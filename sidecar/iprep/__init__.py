"""IP intelligence: the client address, local MaxMind lookups and custom category databases.

- ``client_ip``: which address a request comes from (source address or a trusted
  X-Forwarded-For entry).
- ``cidrs``: CIDR allow/deny tables compiled once per policy.
- ``mmdb``: the ``--geoip`` databases, hot-swapped when replaced on disk.
- ``build``: ``abuse-sidecar mmdb build``, CIDR lists → MaxMind DB of categories.
"""
