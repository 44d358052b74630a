"""The cost model: Shopify's published weights, shared by the IBM cost directives
and Apollo's demand control, in one place (see ``docs/graphql-cost.md``).

- a scalar or enum costs 0 (or its ``@cost``), an object 1 (or its ``@cost``);
- a list costs ``size × (weight + cost of its selection)``;
- a Relay connection costs ``weight + 1 + size × (1 + cost of one item's
  selection) + cost of its other fields``: 2 + size for a plain connection; the
  extra 1 pays for ``pageInfo``, which is free, like ``cursor`` and ``totalCount``;
- each mutation root field costs 10 (or its ``@cost``) plus its selection;
- interfaces and unions cost the most expensive of their possible types.

``size`` is the largest ``first``/``last``/``limit`` (literal, variable or
variable default), else ``@listSize(assumedSize:)``, else ``defaultListSize``.

GitHub's figures are computed in the same walk, for logs and explanations:
``nodes`` sums, over every list, its size times the sizes of the lists above it;
``requests`` sums, over every list, the product of the sizes above it (1 at the
top); ``points = max(1, round(requests / 100))``.
"""

from __future__ import annotations

MUTATION_WEIGHT = 10
OBJECT_WEIGHT = 1
LEAF_WEIGHT = 0
CONNECTION_EXTRA = 1  # pageInfo, on top of the connection object's own weight
ITEM_WEIGHT = 1  # one item (edge + node) of a connection
GITHUB_REQUESTS_PER_POINT = 100


def object_cost(weight: int, children: int) -> int:
    return max(0, weight + children)


def list_cost(size: int, weight: int, children: int) -> int:
    return size * max(0, weight + children)


def connection_cost(size: int, weight: int, item_children: int, other_fields: int) -> int:
    per_item = ITEM_WEIGHT + item_children
    return max(0, weight + CONNECTION_EXTRA + size * per_item + other_fields)


def github_points(requests: int) -> int:
    """GitHub rounds requests/100 to the nearest whole number, and charges at least 1."""
    half = GITHUB_REQUESTS_PER_POINT // 2
    return max(1, (requests + half) // GITHUB_REQUESTS_PER_POINT)
