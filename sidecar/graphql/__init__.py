"""GraphQL request analysis: bounded parsing, structural limits and query cost.

No pipeline knowledge here: ``sidecar/steps/graphql.py`` turns an ``Analysis``
into a verdict. See ``docs/graphql-cost.md`` for the model.
"""

from sidecar.graphql.analysis import Analyser
from sidecar.graphql.limits import Limits
from sidecar.graphql.outcome import Analysis, Measurements, Problem
from sidecar.graphql.schema import CostSchema, build_cost_schema

__all__ = [
    "Analyser",
    "Analysis",
    "CostSchema",
    "Limits",
    "Measurements",
    "Problem",
    "build_cost_schema",
]
