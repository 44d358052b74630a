"""One walk over an operation: depth, aliases, root fields, directives, the
largest list size asked for, introspection, cost and GitHub's nodes/requests.

Fragments are expanded by value, not by text: each fragment is summarised once
(in dependency order, see ``parse.prepare``) and every spread adds its summary,
so a fragment spread a thousand times, or a chain of fragments that each spread
the next twice, costs one summary each to measure while the counts still grow
as if the document had been expanded. Recursion follows the nesting of one
selection set, which the parser caps, never a fragment chain.

Counting rules:

- depth: fields along the deepest path; fragments are transparent; the
  subtrees of ``__schema`` and ``__type`` are not counted (the standard
  introspection query is 15 deep) but are held to graphql-js's introspection
  rule instead (lists ``fields``/``interfaces``/``possibleTypes``/``inputFields``
  nested fewer than 3 deep);
- aliases and directives: every occurrence, fragments expanded per spread;
- root fields: the fields at the top of the operation, fragments expanded;
- ``@skip(if: true)`` and ``@include(if: false)`` written as literals remove
  the subtree from the cost (it is not executed) but not from the counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from graphql.language import (
    BooleanValueNode,
    DirectiveNode,
    FieldNode,
    FloatValueNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    IntValueNode,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    VariableNode,
)

from sidecar.graphql import cost as model
from sidecar.graphql.outcome import SATURATION, saturate
from sidecar.graphql.parse import PreparedOperation
from sidecar.graphql.schema import DEFAULT_SLICING_ARGUMENTS, EDGES, NODES, CostSchema, TypeCost

INTROSPECTION_ROOTS = frozenset(("__schema", "__type"))
INTROSPECTION_LISTS = frozenset(("fields", "interfaces", "possibleTypes", "inputFields"))
MAX_INTROSPECTION_LISTS = 3  # graphql-js MaxIntrospectionDepthRule
SLICING_ARGUMENTS = frozenset(DEFAULT_SLICING_ARGUMENTS)
PAGE_INFO = "pageInfo"
NODE = "node"
SCHEMALESS_SIZED = frozenset((NODES,))
_SKIP_DIRECTIVES = frozenset(("skip", "include"))
# A fragment that applies to more object types than this is charged in full (an
# upper bound) rather than per type, so huge unions cannot make the walk slow.
MAX_GROUPED_TYPES = 32


class _Missing:
    """A variable the request did not send (its declared default applies)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()
SizeKey = int | None | _Missing


def size_of(value: object) -> int | None:
    """The list size a JSON variable value asks for, or None when it is no number.

    Follows GraphQL's Int input coercion (integral floats such as ``1e5`` are
    Ints) and also reads numeric strings, which lenient servers accept.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return saturate(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return saturate(int(value))
        return None
    if isinstance(value, str):
        return _number_text(value)
    return None


def variable_key(variables: Mapping[str, object] | None, name: str) -> SizeKey:
    """The part of a variable's value that can change an analysis (its list size)."""
    if variables is None or name not in variables:
        return MISSING
    return size_of(variables[name])


def _number_text(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if text.isdigit() or (text[0] in "+-" and text[1:].isdigit()):
        if len(text) > 18:
            return SATURATION if text[0] != "-" else 0
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return None
    if math.isfinite(number) and number.is_integer():
        return saturate(int(number))
    return None


def _literal_size(value: ValueNode) -> int | None:
    if isinstance(value, IntValueNode):
        return _number_text(value.value)
    if isinstance(value, FloatValueNode | StringValueNode):
        return _number_text(value.value)
    return None


def _skipped(directives: tuple[DirectiveNode, ...]) -> bool:
    """``@skip(if: true)`` / ``@include(if: false)`` written as literals."""
    for directive in directives:
        name = directive.name.value
        if name not in _SKIP_DIRECTIVES:
            continue
        for argument in directive.arguments or ():
            value = argument.value
            if (
                argument.name.value == "if"
                and isinstance(value, BooleanValueNode)
                and value.value == (name == "skip")
            ):
                return True
    return False


@dataclass(slots=True)
class Summary:
    """What a selection set adds, relative to where it is used.

    Besides the plain ``cost``, three views serve the connection rule without a
    second walk: ``edge_item`` (this set as an edge: `node` costs only its
    children), ``conn_item`` (as a connection: what one item costs besides its
    own 1) and ``conn_other`` (as a connection: the fields that are not items,
    `pageInfo` free). ``mutation`` is the cost as the mutation root.
    """

    depth: int = 0
    aliases: int = 0
    directives: int = 0
    fields: int = 0
    cost: int = 0
    edge_item: int = 0
    conn_item: int = 0
    conn_other: int = 0
    mutation: int = 0
    nodes: int = 0
    requests: int = 0
    has_items: bool = False
    max_list: int = -1
    max_list_at: str = ""
    introspection: bool = False
    list_nesting: int = 0
    introspection_lists: int = 0


@dataclass(frozen=True, slots=True)
class OperationMeasure:
    depth: int
    aliases: int
    root_fields: int
    directives: int
    cost: int
    github_nodes: int
    github_points: int
    max_list: int  # -1 when no first/last/limit was given
    max_list_at: str
    introspection: bool
    introspection_lists: int
    # Variables whose values sized a list: the only ones that can change the result.
    slicing_variables: tuple[str, ...]


def measure_operation(
    prepared: PreparedOperation,
    variables: Mapping[str, object] | None,
    default_list_size: int,
    schema: CostSchema | None,
) -> OperationMeasure:
    operation = prepared.operation
    defaults: dict[str, ValueNode] = {}
    directives = len(operation.directives or ())
    for definition in operation.variable_definitions or ():
        directives += len(definition.directives or ())
        if definition.default_value is not None:
            defaults[definition.variable.name.value] = definition.default_value
    walker = _Walker(prepared, variables, defaults, default_list_size, schema)
    root_type: TypeCost | None = None
    if schema is not None:
        root_type = {
            "query": schema.query,
            "mutation": schema.mutation,
            "subscription": schema.subscription,
        }[operation.operation.value]
    for name in prepared.order:
        fragment = prepared.fragments[name]
        condition = walker.type_named(fragment.type_condition.name.value)
        summary = walker.selection_set(fragment.selection_set, condition)
        summary.directives = saturate(summary.directives + len(fragment.directives or ()))
        walker.fragments[name] = (summary, condition)
    root = walker.selection_set(operation.selection_set, root_type)
    is_mutation = operation.operation.value == "mutation"
    return OperationMeasure(
        depth=root.depth,
        aliases=root.aliases,
        root_fields=root.fields,
        directives=saturate(root.directives + directives),
        cost=root.mutation if is_mutation else root.cost,
        github_nodes=root.nodes,
        github_points=model.github_points(root.requests),
        max_list=root.max_list,
        max_list_at=root.max_list_at,
        introspection=root.introspection,
        introspection_lists=root.introspection_lists,
        slicing_variables=tuple(walker.slicing_variables),
    )


class _Walker:
    __slots__ = (
        "_default_size",
        "_defaults",
        "_schema",
        "_sized_names",
        "_variables",
        "fragments",
        "slicing_variables",
    )

    def __init__(
        self,
        prepared: PreparedOperation,
        variables: Mapping[str, object] | None,
        defaults: Mapping[str, ValueNode],
        default_list_size: int,
        schema: CostSchema | None,
    ) -> None:
        self._variables = variables
        self._defaults = defaults
        self._default_size = default_list_size
        self._schema = schema
        self._sized_names = schema.sized_names if schema is not None else SCHEMALESS_SIZED
        self.fragments: dict[str, tuple[Summary, TypeCost | None]] = {}
        self.slicing_variables: dict[str, None] = {}

    def type_named(self, name: str) -> TypeCost | None:
        if self._schema is None:
            return None
        return self._schema.types.get(name)

    def _size(self, value: ValueNode) -> int | None:
        if isinstance(value, VariableNode):
            name = value.name.value
            self.slicing_variables[name] = None
            variables = self._variables
            if variables is not None and name in variables:
                return size_of(variables[name])
            default = self._defaults.get(name)
            return _literal_size(default) if default is not None else None
        return _literal_size(value)

    def selection_set(self, node: SelectionSetNode, parent: TypeCost | None) -> Summary:
        depth = aliases = directives = fields = 0
        cost = edge_item = conn_item = conn_other = mutation = nodes = requests = 0
        has_items = introspection = False
        max_list = -1
        max_list_at = ""
        list_nesting = introspection_lists = 0
        # Abstract parent with a schema: costs of fragments that apply to only some
        # of its object types, per object type; the most expensive one is charged.
        groups: dict[str, list[int]] | None = None
        parent_fields = parent.fields if parent is not None else None
        sized_names = self._sized_names

        for selection in node.selections:
            selection_directives = selection.directives
            skipped = False
            if selection_directives:
                directives += len(selection_directives)
                skipped = _skipped(selection_directives)

            if isinstance(selection, FieldNode):
                name = selection.name.value
                fields += 1
                if selection.alias is not None:
                    aliases += 1
                below = selection.selection_set
                if name in INTROSPECTION_ROOTS:
                    # Exempt from depth and cost; held to the introspection rule.
                    introspection = True
                    if below is not None:
                        child = self.selection_set(below, None)
                        aliases += child.aliases
                        directives += child.directives
                        if child.max_list > max_list:
                            max_list, max_list_at = child.max_list, child.max_list_at
                        nested = max(child.list_nesting, child.introspection_lists)
                        introspection_lists = max(introspection_lists, nested)
                    continue

                definition = parent_fields.get(name) if parent_fields is not None else None
                if definition is not None and definition.leaf != (below is None):
                    definition = None  # the query disagrees with the schema: infer
                explicit: int | None = None
                argument_cost = 0
                arguments = selection.arguments
                if arguments:
                    slicing = definition.slicing if definition is not None else SLICING_ARGUMENTS
                    weights = definition.argument_weights if definition is not None else None
                    for argument in arguments:
                        argument_name = argument.name.value
                        if argument_name in slicing:
                            value = self._size(argument.value)
                            if value is not None:
                                if explicit is None or value > explicit:
                                    explicit = value
                                if value > max_list:
                                    max_list = value
                                    max_list_at = f"{name}({argument_name}: {value})"
                        if weights:
                            argument_cost += weights.get(argument_name, 0)

                if below is None:
                    depth = max(depth, 1)
                    if definition is None:
                        field_cost = 0
                    else:
                        weight = definition.weight
                        if definition.is_list:
                            size = self._list_size(
                                explicit, definition.slicing_default, definition.assumed_size
                            )
                            field_cost = model.list_cost(size, weight, 0)
                        else:
                            field_cost = model.object_cost(weight, 0)
                    field_cost = saturate(field_cost + argument_cost)
                    root_mutation = saturate(
                        (
                            definition.weight
                            if definition is not None and definition.explicit_weight
                            else model.MUTATION_WEIGHT
                        )
                        + argument_cost
                    )
                    if not skipped:
                        cost += field_cost
                        mutation += root_mutation
                        edge_item += field_cost
                        if name != PAGE_INFO:
                            conn_other += field_cost
                    continue

                child_type = (
                    self.type_named(definition.type_name) if definition is not None else None
                )
                child = self.selection_set(below, child_type)
                field_depth = child.depth + 1
                depth = max(depth, field_depth)
                aliases += child.aliases
                directives += child.directives
                if child.max_list > max_list:
                    max_list, max_list_at = child.max_list, child.max_list_at
                if child.introspection:
                    introspection = True
                introspection_lists = max(introspection_lists, child.introspection_lists)
                nesting = child.list_nesting + (1 if name in INTROSPECTION_LISTS else 0)
                list_nesting = max(list_nesting, nesting)

                if definition is None:
                    weight = model.OBJECT_WEIGHT
                    is_connection = child.has_items
                    is_list = explicit is not None and not is_connection
                    sized_list = is_connection or is_list
                    size = self._list_size(explicit, None, None) if sized_list else 1
                    explicit_weight = False
                    item_holder = False
                else:
                    weight = definition.weight
                    is_connection = definition.connection
                    is_list = definition.is_list and not definition.sized
                    sized_list = is_connection or is_list
                    size = (
                        self._list_size(
                            explicit, definition.slicing_default, definition.assumed_size
                        )
                        if sized_list
                        else 1
                    )
                    explicit_weight = definition.explicit_weight
                    item_holder = definition.sized

                if is_connection:
                    field_cost = model.connection_cost(
                        size, weight, child.conn_item, child.conn_other
                    )
                elif is_list:
                    field_cost = model.list_cost(size, weight, child.cost)
                elif item_holder:
                    # `edges`/`nodes` of a connection: the connection pays per item.
                    field_cost = child.cost
                else:
                    field_cost = model.object_cost(weight, child.cost)
                field_cost = saturate(field_cost + argument_cost)
                if sized_list:
                    field_nodes = saturate(size + size * child.nodes)
                    field_requests = saturate(1 + size * child.requests)
                else:
                    field_nodes = child.nodes
                    field_requests = child.requests
                if skipped:
                    continue
                cost += field_cost
                nodes += field_nodes
                requests += field_requests
                mutation += saturate(
                    (weight if explicit_weight else model.MUTATION_WEIGHT)
                    + child.cost
                    + argument_cost
                )
                edge_item += child.cost if name == NODE else field_cost
                if name == EDGES:
                    has_items = True
                    conn_item += child.edge_item
                elif name in sized_names:
                    has_items = True
                    conn_item += child.cost
                elif name != PAGE_INFO:
                    conn_other += field_cost
                continue

            # A fragment: inline, or a spread of a summary made earlier.
            if isinstance(selection, InlineFragmentNode):
                condition_node = selection.type_condition
                if condition_node is None:
                    condition = parent
                else:
                    condition = self.type_named(condition_node.name.value)
                part = self.selection_set(selection.selection_set, condition)
            elif isinstance(selection, FragmentSpreadNode):
                part, condition = self.fragments[selection.name.value]
            else:  # pragma: no cover - the parser makes no other selections
                continue
            depth = max(depth, part.depth)
            aliases += part.aliases
            directives += part.directives
            fields += part.fields
            if part.max_list > max_list:
                max_list, max_list_at = part.max_list, part.max_list_at
            if part.introspection:
                introspection = True
            introspection_lists = max(introspection_lists, part.introspection_lists)
            list_nesting = max(list_nesting, part.list_nesting)
            if skipped:
                continue
            nodes += part.nodes
            requests += part.requests
            mutation += part.mutation
            if part.has_items:
                has_items = True
            applies = _applies_to(parent, condition)
            if applies is None:
                cost += part.cost
                edge_item += part.edge_item
                conn_item += part.conn_item
                conn_other += part.conn_other
            elif applies:
                if groups is None:
                    groups = {}
                for object_type in applies:
                    group = groups.get(object_type)
                    if group is None:
                        groups[object_type] = [
                            part.cost,
                            part.edge_item,
                            part.conn_item,
                            part.conn_other,
                        ]
                    else:
                        group[0] += part.cost
                        group[1] += part.edge_item
                        group[2] += part.conn_item
                        group[3] += part.conn_other

        if groups:
            values = groups.values()
            cost += max(group[0] for group in values)
            edge_item += max(group[1] for group in values)
            conn_item += max(group[2] for group in values)
            conn_other += max(group[3] for group in values)
        return Summary(
            depth=depth,
            aliases=saturate(aliases),
            directives=saturate(directives),
            fields=saturate(fields),
            cost=saturate(cost),
            edge_item=saturate(edge_item),
            conn_item=saturate(conn_item),
            conn_other=saturate(conn_other),
            mutation=saturate(mutation),
            nodes=saturate(nodes),
            requests=saturate(requests),
            has_items=has_items,
            max_list=max_list,
            max_list_at=max_list_at,
            introspection=introspection,
            list_nesting=list_nesting,
            introspection_lists=introspection_lists,
        )

    def _list_size(
        self, explicit: int | None, schema_default: int | None, assumed: int | None
    ) -> int:
        if explicit is not None:
            return explicit if explicit > 0 else 0
        if schema_default is not None:
            return schema_default if schema_default > 0 else 0
        if assumed is not None:
            return assumed
        return self._default_size


def _applies_to(parent: TypeCost | None, condition: TypeCost | None) -> frozenset[str] | None:
    """None: the fragment applies whatever the object is (charged in full). Otherwise
    the object types it applies to (charged only in the most expensive case)."""
    if parent is None or condition is None or condition is parent:
        return None
    applies = parent.possible & condition.possible
    if applies == parent.possible or len(applies) > MAX_GROUPED_TYPES:
        return None
    return applies
