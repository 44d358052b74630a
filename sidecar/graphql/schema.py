"""``spec.graphql.schema``: the SDL, compiled once into the tables the cost walk reads.

The SDL decides which fields are leaves (scalars, enums), objects, abstract
types (interfaces and unions: the most expensive possible type is charged),
lists and Relay connections, and carries the IBM cost directives:

- ``@cost(weight:)`` on a field, an object, a scalar or an enum, and on an
  argument (added when the argument is given). Integers, or numeric strings as
  the IBM draft writes them (``"2.5"`` is rounded up).
- ``@listSize(assumedSize:, slicingArguments:, sizedFields:)`` on a field.
  ``requireOneSlicingArgument`` is accepted and not enforced: ``defaultListSize``
  applies instead, as the contract says.

Directives need no definition in the SDL: ``@cost``, ``@listSize`` and any other
directive the server's SDL uses (federation's ``@key``, ...) are accepted.
Everything else must be a valid schema; problems are reported as ``ValueError``
with the line and column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from graphql import (
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    build_ast_schema,
    get_named_type,
    get_nullable_type,
    is_leaf_type,
    is_list_type,
    parse,
    validate_schema,
)
from graphql.language import (
    ConstDirectiveNode,
    FloatValueNode,
    IntValueNode,
    ListValueNode,
    StringValueNode,
    ValueNode,
)
from graphql.validation.rules.known_directives import KnownDirectivesRule
from graphql.validation.specified_rules import specified_sdl_rules
from graphql.validation.validate import validate_sdl

DEFAULT_SLICING_ARGUMENTS = ("first", "last", "limit")

# A connection's `edges` is sized by the connection; `node` below it is one item.
EDGES = "edges"
NODES = "nodes"

_SDL_RULES = tuple(rule for rule in specified_sdl_rules if rule is not KnownDirectivesRule)


@dataclass(frozen=True, slots=True)
class FieldCost:
    type_name: str  # the named return type
    leaf: bool  # scalar or enum
    is_list: bool
    connection: bool  # returns a Relay connection (or has @listSize(sizedFields:))
    sized: bool  # this field holds the items of the connection it belongs to
    weight: int  # @cost on the field, else on its type, else 1 (composite) / 0 (leaf)
    explicit_weight: bool  # @cost on the field itself (kept for mutation root fields)
    slicing: frozenset[str]
    slicing_default: int | None  # largest schema default of a slicing argument
    assumed_size: int | None
    argument_weights: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class TypeCost:
    name: str
    possible: frozenset[str]  # the object types a value of this type can be
    fields: Mapping[str, FieldCost]


@dataclass(frozen=True, slots=True, eq=False)
class CostSchema:
    types: Mapping[str, TypeCost]
    query: TypeCost | None
    mutation: TypeCost | None
    subscription: TypeCost | None
    # Field names that hold connection items besides `edges` (`nodes`, and every
    # name given in @listSize(sizedFields:)).
    sized_names: frozenset[str]


def build_cost_schema(sdl: str) -> CostSchema:
    """Compile an SDL string; raises ``ValueError`` naming the problem and where it is."""
    try:
        document = parse(sdl)
    except GraphQLError as exc:
        raise ValueError(_describe(exc)) from None
    errors = validate_sdl(document, rules=_SDL_RULES)
    if errors:
        raise ValueError(_describe(errors[0]))
    try:
        schema = build_ast_schema(document, assume_valid_sdl=True)
    except (GraphQLError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    errors = list(validate_schema(schema))
    if errors:
        raise ValueError(_describe(errors[0]))
    return _compile(schema)


def _describe(error: GraphQLError) -> str:
    locations = error.locations or []
    if locations:
        where = " and ".join(f"line {at.line}, column {at.column}" for at in locations)
        return f"{where}: {error.message}"
    return error.message


def _compile(schema: GraphQLSchema) -> CostSchema:
    type_weights = {
        name: weight
        for name, graphql_type in schema.type_map.items()
        if (weight := _type_weight(name, graphql_type)) is not None
    }
    sized_by_type: dict[str, set[str]] = {}
    sized_names: set[str] = {NODES}
    composite = {
        name: graphql_type
        for name, graphql_type in schema.type_map.items()
        if not name.startswith("__")
        and isinstance(graphql_type, GraphQLObjectType | GraphQLInterfaceType | GraphQLUnionType)
    }
    # @listSize(sizedFields:) marks fields of the returned type as item holders.
    for type_name, graphql_type in composite.items():
        if isinstance(graphql_type, GraphQLUnionType):
            continue
        for field_name, graphql_field in graphql_type.fields.items():
            sized_fields = _list_size(graphql_field, type_name, field_name).sized_fields
            if sized_fields:
                target = get_named_type(graphql_field.type).name
                sized_by_type.setdefault(target, set()).update(sized_fields)
                sized_names.update(name for name in sized_fields if name != EDGES)

    types: dict[str, TypeCost] = {}
    for type_name, graphql_type in composite.items():
        if isinstance(graphql_type, GraphQLUnionType):
            possible = frozenset(t.name for t in schema.get_possible_types(graphql_type))
            types[type_name] = TypeCost(type_name, possible, {})
            continue
        if isinstance(graphql_type, GraphQLInterfaceType):
            possible = frozenset(t.name for t in schema.get_possible_types(graphql_type))
        else:
            possible = frozenset((type_name,))
        item_fields = sized_by_type.get(type_name, set()) | _relay_item_fields(graphql_type)
        fields = {
            field_name: _field_cost(
                schema,
                type_name,
                field_name,
                graphql_field,
                type_weights=type_weights,
                sized=field_name in item_fields,
            )
            for field_name, graphql_field in graphql_type.fields.items()
        }
        types[type_name] = TypeCost(type_name, possible, fields)

    def root(graphql_type: GraphQLObjectType | None) -> TypeCost | None:
        return types.get(graphql_type.name) if graphql_type is not None else None

    return CostSchema(
        types=types,
        query=root(schema.query_type),
        mutation=root(schema.mutation_type),
        subscription=root(schema.subscription_type),
        sized_names=frozenset(sized_names),
    )


def _relay_item_fields(graphql_type: GraphQLObjectType | GraphQLInterfaceType) -> set[str]:
    """`edges` (a list of objects with `node`) and `nodes` (a list) of a Relay connection."""
    found: set[str] = set()
    edges = graphql_type.fields.get(EDGES)
    if edges is not None and is_list_type(get_nullable_type(edges.type)):
        edge_type = get_named_type(edges.type)
        if isinstance(edge_type, GraphQLObjectType | GraphQLInterfaceType) and (
            "node" in edge_type.fields
        ):
            found.add(EDGES)
    nodes = graphql_type.fields.get(NODES)
    if nodes is not None and is_list_type(get_nullable_type(nodes.type)):
        found.add(NODES)
    return found


@dataclass(frozen=True, slots=True)
class _ListSize:
    assumed_size: int | None = None
    slicing_arguments: tuple[str, ...] | None = None
    sized_fields: tuple[str, ...] = ()


def _field_cost(
    schema: GraphQLSchema,
    type_name: str,
    field_name: str,
    graphql_field: GraphQLField,
    *,
    type_weights: Mapping[str, int],
    sized: bool,
) -> FieldCost:
    where = f"{type_name}.{field_name}"
    named = get_named_type(graphql_field.type)
    leaf = is_leaf_type(named)
    is_list = is_list_type(get_nullable_type(graphql_field.type))
    own_weight = _cost_weight(_directives(graphql_field.ast_node), where)
    if own_weight is not None:
        weight = own_weight
    else:
        weight = type_weights.get(named.name, 0 if leaf else 1)
    list_size = _list_size(graphql_field, type_name, field_name)
    slicing = frozenset(
        list_size.slicing_arguments
        if list_size.slicing_arguments is not None
        else DEFAULT_SLICING_ARGUMENTS
    )
    defaults = [
        value
        for name, argument in graphql_field.args.items()
        if name in slicing
        and argument.ast_node is not None
        and argument.ast_node.default_value is not None
        and (value := _int_value(argument.ast_node.default_value)) is not None
    ]
    argument_weights: dict[str, int] = {}
    for name, argument in graphql_field.args.items():
        argument_weight = _cost_weight(_directives(argument.ast_node), f"{where}({name}:)")
        if argument_weight:
            argument_weights[name] = argument_weight
    connection = False
    if not leaf and not is_list:
        returned = schema.type_map.get(named.name)
        if isinstance(returned, GraphQLObjectType | GraphQLInterfaceType):
            connection = bool(list_size.sized_fields) or bool(_relay_item_fields(returned))
    return FieldCost(
        type_name=named.name,
        leaf=leaf,
        is_list=is_list,
        connection=connection,
        sized=sized,
        weight=weight,
        explicit_weight=own_weight is not None,
        slicing=slicing,
        slicing_default=max(defaults) if defaults else None,
        assumed_size=list_size.assumed_size,
        argument_weights=argument_weights,
    )


def _directives(node: object) -> Iterable[ConstDirectiveNode]:
    directives = getattr(node, "directives", None)
    return directives or ()


def _type_weight(name: str, graphql_type: object) -> int | None:
    ast_node = getattr(graphql_type, "ast_node", None)
    weight = _cost_weight(_directives(ast_node), name)
    for extension in getattr(graphql_type, "extension_ast_nodes", None) or ():
        extension_weight = _cost_weight(_directives(extension), name)
        if extension_weight is not None:
            weight = extension_weight
    return weight


def _argument(directive: ConstDirectiveNode, name: str) -> ValueNode | None:
    for argument in directive.arguments or ():
        if argument.name.value == name:
            return argument.value
    return None


def _cost_weight(directives: Iterable[ConstDirectiveNode], where: str) -> int | None:
    for directive in directives:
        if directive.name.value != "cost":
            continue
        value = _argument(directive, "weight")
        number: float | None = None
        if isinstance(value, IntValueNode | FloatValueNode | StringValueNode):
            try:
                number = float(value.value)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            raise ValueError(f"{where}: @cost(weight:) must be a number")
        return math.ceil(number)
    return None


def _list_size(graphql_field: GraphQLField, type_name: str, field_name: str) -> _ListSize:
    where = f"{type_name}.{field_name}"
    for directive in _directives(graphql_field.ast_node):
        if directive.name.value != "listSize":
            continue
        assumed: int | None = None
        assumed_node = _argument(directive, "assumedSize")
        if assumed_node is not None:
            assumed = _int_value(assumed_node)
            if assumed is None or assumed < 0:
                raise ValueError(f"{where}: @listSize(assumedSize:) must be a non-negative Int")
        slicing = _string_list(_argument(directive, "slicingArguments"), where, "slicingArguments")
        if slicing is not None:
            unknown = [name for name in slicing if name not in graphql_field.args]
            if unknown:
                raise ValueError(
                    f"{where}: @listSize(slicingArguments:) names unknown argument {unknown[0]!r}"
                )
        sized = _string_list(_argument(directive, "sizedFields"), where, "sizedFields")
        return _ListSize(assumed, slicing, sized or ())
    return _ListSize()


def _string_list(value: ValueNode | None, where: str, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.values if isinstance(value, ListValueNode) else (value,)
    names: list[str] = []
    for item in items:
        if not isinstance(item, StringValueNode):
            raise ValueError(f"{where}: @listSize({name}:) must be a list of strings")
        names.append(item.value)
    return tuple(names)


def _int_value(value: ValueNode) -> int | None:
    if isinstance(value, IntValueNode):
        try:
            return int(value.value)
        except ValueError:
            return None
    return None
