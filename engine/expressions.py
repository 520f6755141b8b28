"""CEL expressions: trigger and wait conditions, flow-control keys, priorities.

An expression is compiled once, when the function that uses it is defined, and evaluated for every
incoming event. Compilation refuses, with an ExpressionError naming the expression and the problem:
syntax errors, unknown variables and functions, a result of the wrong type when that is visible
statically, expressions too deep to evaluate, and expressions whose estimated cost is over budget.

Cost model
----------
celpy has no evaluation budget, so the work is bounded statically and checked at evaluation time:

* Every parse-tree node that does work costs 1. celpy's grammar wraps each operand in a chain of
  single-child precedence nodes (``expr`` > ``conditionalor`` > ... > ``primary``); those wrappers cost
  0, so ``event.data.x == 1`` costs 5 (``==``, two field selections, ``event``, ``1``).
* A comprehension macro (``all``, ``exists``, ``exists_one``, ``map``, ``filter``) costs
  ``1 + cost(range) + N * cost(body)``, where N is the length of the range when it is a list literal and
  COMPREHENSION_BOUND (1,000 elements) otherwise.
* Comprehensions nested more than MAX_COMPREHENSION_DEPTH (2) deep are refused whatever their cost, and
  so are parse trees deeper than MAX_TREE_DEPTH levels (celpy evaluates recursively, about four Python
  frames per level, and must stay well inside the default recursion limit).
* At evaluation, a comprehension over more than COMPREHENSION_BOUND elements fails with ExpressionError,
  so the static estimate is an upper bound on the number of node evaluations.
* A node's own work is linear in the size of the values it touches (string functions, ``in`` on a
  list, comparing maps), which the payload size limit bounds. Only ``+`` makes values larger than the
  payload (chains like ``s + s + s`` inside comprehensions grow geometrically), so at evaluation the
  strings, bytes and lists that ``+`` builds may hold CONCATENATION_BOUND elements in all, else
  ExpressionError. ``matches`` runs on RE2 (celpy imports
  ``google-re2``): linear time, no backtracking, so no pattern can be catastrophic. A literal pattern is
  also compiled at definition time, so a malformed one is refused early.

DEFAULT_MAX_COST (10,000) admits one comprehension over a payload list with a body of up to 9 nodes;
nested comprehensions over payload lists need a larger ``max_cost``. celpy's tree walker takes roughly
25 microseconds per unit, so the default budget caps one evaluation at about a quarter of a second.

Evaluation
----------
Only the variables an expression references are converted to CEL values, and of each only the parts
reached through constant field paths: ``event.data.user.id == "u1"`` converts that one leaf, not the
whole payload. Missing keys stay missing, so results and errors are the same as converting everything.

Each evaluation builds a fresh celpy Evaluator and Activation over a parse tree and a base activation
that are never mutated, so one Expression may be evaluated from several threads at once without a lock.
celpy's CompiledRunner is deliberately not used: it keeps the activation in module globals.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, TypeAlias, get_args

import attrs
import lark
import re2
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError, CELParser
from celpy.evaluation import Activation, CELEvalError, Evaluator, base_functions
from lark.exceptions import UnexpectedCharacters, UnexpectedToken
from steplog.engine.jsonvalues import is_unicode

ResultKind: TypeAlias = Literal["bool", "any", "string", "number"]

COMPREHENSION_BOUND: Final = 1000
"""Elements a comprehension is assumed to iterate over, and the most it may iterate over at evaluation."""
CONCATENATION_BOUND: Final = 10_000_000
"""Characters, bytes or list elements that ``+`` may build in one evaluation, all concatenations together."""
MAX_COMPREHENSION_DEPTH: Final = 2
MAX_TREE_DEPTH: Final = 100
DEFAULT_MAX_LENGTH: Final = 4096
DEFAULT_MAX_COST: Final = 10_000

_Tree: TypeAlias = "lark.Tree[lark.Token]"
_Fields: TypeAlias = "dict[str, _Fields | None]"
"""Field names reached by constant paths; None means the whole value is needed."""

_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
_UNSUPPORTED_MACROS: Final = frozenset({"reduce", "min"})  # celpy extensions, not CEL
_FUNCTIONS: Final = frozenset(name for name in base_functions if name.isidentifier())
_TYPE_NAMES: Final = frozenset(
    {"bool", "bytes", "double", "duration", "int", "list", "map", "null_type", "string", "timestamp", "uint", "type"}
)
_WRAPPERS: Final = frozenset(
    {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication", "unary", "member", "primary"}
)
_NUMERIC: Final = frozenset({"int", "uint", "double"})
_LITERAL_KINDS: Final = {
    "INT_LIT": "int",
    "UINT_LIT": "uint",
    "FLOAT_LIT": "double",
    "STRING_LIT": "string",
    "MLSTRING_LIT": "string",
    "BYTES_LIT": "bytes",
    "BOOL_LIT": "bool",
    "NULL_LIT": "null",
}
_CALL_KINDS: Final = {
    **{name: "bool" for name in ("has", "startsWith", "endsWith", "contains", "matches")},
    **{name: "bool" for name in ("all", "exists", "exists_one")},
    **{name: "list" for name in ("map", "filter")},
    **{name: "int" for name in ("size", "int", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear")},
    **{name: "int" for name in ("getFullYear", "getMonth", "getHours", "getMilliseconds", "getMinutes", "getSeconds")},
    **{name: name for name in ("uint", "double", "string", "bool", "bytes", "timestamp", "duration", "type")},
}
_CEL_KINDS: Final = (
    (celtypes.BoolType, "bool"),
    (celtypes.IntType, "int"),
    (celtypes.UintType, "uint"),
    (celtypes.DoubleType, "double"),
    (celtypes.StringType, "string"),
    (celtypes.BytesType, "bytes"),
    (celtypes.ListType, "list"),
    (celtypes.MapType, "map"),
    (celtypes.TimestampType, "timestamp"),
    (celtypes.DurationType, "duration"),
    (type(None), "null"),
)

_GENERIC_REASONS: Final = frozenset(
    {"no such overload", "return error for overflow", "invalid_argument", "no such key", "match error"}
)
"""celpy reasons too vague on their own; the underlying Python error is appended."""

_BASE_ACTIVATION: Final = Activation()
_PARSE_LOCK: Final = threading.Lock()


class ExpressionError(ValueError):
    """An expression was refused at definition time or failed while evaluating."""

    def __init__(self, source: str, reason: str) -> None:
        """Build the error.

        Args:
            source: The expression text (full; the message shows an abbreviation).
            reason: What is wrong, in a few words.
        """
        super().__init__(f"expression {_abbreviate(source)!r}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[type[ExpressionError], tuple[str, str]]:
        # The default reduction would call __init__ with the message only.
        return type(self), (self.source, self.reason)


class _Refused(Exception):
    """Internal: the static analysis rejects the expression for ``reason``."""


class _TooManyElements(Exception):
    """Internal: a comprehension went past COMPREHENSION_BOUND elements."""


class _TooMuchConcatenation(Exception):
    """Internal: ``+`` built more than CONCATENATION_BOUND elements in one evaluation."""


@attrs.frozen
class Expression:
    """A compiled CEL expression, ready to evaluate many times (and from many threads).

    Build one with compile_expression. Equality and hashing use the source, the names and the
    result kind only.
    """

    source: str
    names: frozenset[str]
    """Variables the expression may reference."""
    result: ResultKind = attrs.field(default="any", kw_only=True)
    cost: int = attrs.field(default=0, kw_only=True, eq=False)
    """Estimated worst-case number of node evaluations (see the module docstring)."""
    _tree: _Tree = attrs.field(kw_only=True, eq=False, repr=False, alias="tree")
    _fields: _Fields = attrs.field(kw_only=True, eq=False, repr=False, alias="fields")

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        """Evaluate against JSON variables.

        Args:
            variables: Values for the names, as parsed JSON (dicts, lists, str, int, float, bool, None).
                Names the expression does not reference are ignored.

        Returns:
            The result as plain JSON-able Python: bool, int, float, str, None, list or dict.

        Raises:
            ExpressionError: A referenced variable is missing or not JSON, evaluation failed (missing
                key, type mismatch, division by zero, comprehension over too many elements), or the
                result does not have the kind the expression was compiled for.
        """
        activation = Activation(vars=self._bind(variables), functions={"_+_": _bounded_addition()})
        value = self._run(activation)
        self._check_result(value)
        try:
            return _to_json(value, self.source)
        except RecursionError:
            raise ExpressionError(self.source, "result is nested too deeply") from None

    def referenced(self, name: str, value: Any) -> Any:
        """The parts of ``value`` that the expression reads through variable ``name`` (None if it reads none).

        A pause keeps only these parts of a run's trigger, not the whole event.
        """
        if name not in self._fields:
            return None
        return _select(value, self._fields[name])

    def _bind(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(variables, Mapping):
            raise ExpressionError(self.source, f"variables must be a mapping, not {type(variables).__name__}")
        bound: dict[str, Any] = {}
        for name, fields in self._fields.items():
            if name not in variables:
                raise ExpressionError(self.source, f"variable {name!r} was not provided")
            try:
                bound[name] = json_to_cel(_select(variables[name], fields))
            except RecursionError:
                raise ExpressionError(self.source, f"variable {name!r} is nested too deeply") from None
            except (TypeError, ValueError) as error:
                reason = f"variable {name!r} is not CEL-compatible JSON: {_clip(str(error))}"
                raise ExpressionError(self.source, reason) from None
        return bound

    def _run(self, activation: Activation) -> Any:
        try:
            return _BoundedEvaluator(self._tree, activation).evaluate()
        except CELEvalError as error:
            raise ExpressionError(self.source, _cel_reason(error)) from None
        except _TooManyElements:
            reason = f"a comprehension went over more than {COMPREHENSION_BOUND} elements"
            raise ExpressionError(self.source, reason) from None
        except _TooMuchConcatenation:
            reason = f"'+' built strings, bytes or lists of more than {CONCATENATION_BOUND} elements in all"
            raise ExpressionError(self.source, reason) from None
        except RecursionError:
            raise ExpressionError(self.source, "evaluation nested too deeply") from None
        except Exception as error:  # noqa: BLE001
            # celpy lets a few plain Python errors escape (e.g. odd operand types); callers rely on
            # ExpressionError being the only failure.
            reason = f"evaluation failed: {type(error).__name__}: {_clip(str(error))}"
            raise ExpressionError(self.source, reason) from None

    def _check_result(self, value: Any) -> None:
        if self.result == "any" or _kind_of(value) in _accepted(self.result):
            return
        got = f"{_kind_of(value)} {_clip(repr(value), 60)}"
        raise ExpressionError(self.source, f"expected a {self.result} result, got {got}")


@attrs.frozen
class EqualityCondition:
    """A ``path == path`` or ``path == literal`` conjunct that must hold for the expression to be true.

    Paths start with the variable name, e.g. ``("event", "data", "id")``. When ``right`` is None the
    comparison is against the JSON literal ``value``.
    """

    left: tuple[str, ...]
    right: tuple[str, ...] | None
    value: Any = None


def compile_expression(
    source: str,
    *,
    names: Iterable[str] = ("event",),
    result: ResultKind = "any",
    max_length: int = DEFAULT_MAX_LENGTH,
    max_cost: int = DEFAULT_MAX_COST,
) -> Expression:
    """Compile CEL source at definition time.

    Args:
        source: The CEL text.
        names: Variables the expression may reference.
        result: The kind of result required: "bool", "string", "number" (int, uint or double) or "any".
        max_length: Longest accepted source, in characters.
        max_cost: Largest accepted estimated cost (see the module docstring).

    Returns:
        The compiled Expression. Identical requests share one cached Expression.

    Raises:
        ExpressionError: The expression is refused; the message names it and says why.
        ValueError: ``names`` or ``result`` is not valid (a caller bug, not a bad expression).
    """
    name_set = frozenset([names] if isinstance(names, str) else names)
    bad = sorted(name for name in name_set if not isinstance(name, str) or not name.isidentifier())
    if bad:
        raise ValueError(f"variable names must be identifiers: {bad!r}")
    if result not in get_args(ResultKind):
        raise ValueError(f"result must be one of {get_args(ResultKind)}, not {result!r}")
    if not isinstance(source, str):
        raise ExpressionError(repr(source), f"an expression must be a string, not {type(source).__name__}")
    return _compile(source, name_set, result, max_length, max_cost)


def equality_paths(expr: Expression) -> tuple[EqualityCondition, ...]:
    """The equality conjuncts of an expression, for indexing candidates before evaluating.

    Only top-level ``&&`` operands (through parentheses) count, since each of those must be true for
    the whole expression to be true; an expression with a top-level ``||`` yields nothing.

    Args:
        expr: A compiled expression.

    Returns:
        One EqualityCondition per ``path == path`` or ``path == literal`` conjunct, in source order.
    """
    found = (_equality(conjunct, expr.names) for conjunct in _conjuncts(expr._tree))
    return tuple(condition for condition in found if condition is not None)


def only_equalities(expr: Expression) -> bool:
    """Whether the expression is nothing but a conjunction of ``equality_paths`` conditions, so that
    knowing those equalities hold is knowing the expression is true."""
    return all(_equality(conjunct, expr.names) is not None for conjunct in _conjuncts(expr._tree))


@functools.lru_cache(maxsize=1024)
def _compile(source: str, names: frozenset[str], result: ResultKind, max_length: int, max_cost: int) -> Expression:
    if not source.strip():
        raise ExpressionError(source, "expression is empty")
    if len(source) > max_length:
        raise ExpressionError(source, f"expression is {len(source)} characters long; the limit is {max_length}")
    if not is_unicode(source):
        raise ExpressionError(source, "expression holds a lone surrogate: it is not Unicode text")
    tree = _parse(source)
    try:
        analysis = _analyze(tree, names)
        _check_cost(analysis.cost, max_cost)
        _check_static_kind(tree, result)
    except _Refused as refusal:
        raise ExpressionError(source, str(refusal)) from None
    return Expression(source, names, result=result, cost=analysis.cost, tree=tree, fields=_field_tree(analysis.paths))


def _parse(source: str) -> _Tree:
    try:
        # CELParser keeps the last text on a shared instance; parsing happens at definition time only.
        with _PARSE_LOCK:
            tree: _Tree = _parser().parse(source)
    except CELParseError as error:
        raise ExpressionError(source, _syntax_reason(error)) from None
    depth = _tree_depth(tree)
    if depth > MAX_TREE_DEPTH:
        reason = f"expression is nested too deeply ({depth} parse levels; the limit is {MAX_TREE_DEPTH})"
        raise ExpressionError(source, reason)
    return tree


@functools.cache
def _parser() -> CELParser:
    return CELParser()


def _syntax_reason(error: CELParseError) -> str:
    where = f"syntax error at line {error.line}, column {error.column}" if error.line else "syntax error"
    cause = error.__context__
    if isinstance(cause, UnexpectedToken):
        token = cause.token
        found = "end of expression" if token.type == "$END" else repr(str(token))
        return f"{where}: unexpected {found}"
    if isinstance(cause, UnexpectedCharacters):
        return f"{where}: unexpected character {cause.char!r}"
    return where


def _tree_depth(tree: _Tree) -> int:
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, lark.Tree))
    return deepest


# --- static analysis: names, functions, cost, referenced paths ---------------------------------------


@attrs.define
class _Analysis:
    names: frozenset[str]
    paths: list[tuple[str, ...]] = attrs.field(factory=list)
    cost: int = 0


def _analyze(tree: _Tree, names: frozenset[str]) -> _Analysis:
    analysis = _Analysis(names)
    analysis.cost = _cost(tree, analysis, frozenset(), 0)
    return analysis


def _check_cost(cost: int, max_cost: int) -> None:
    if cost > max_cost:
        raise _Refused(
            f"estimated cost {cost} is over the limit of {max_cost}"
            f" (each comprehension counts its body {COMPREHENSION_BOUND} times)"
        )


def _cost(node: _Tree, analysis: _Analysis, scope: frozenset[str], depth: int) -> int:
    """Estimated cost of ``node``; also checks names and functions and records referenced paths."""
    rule = node.data
    if rule == "member_dot":
        reference = _reference(node)
        if reference is not None:
            _note_reference(*reference, analysis, scope)
            return len(reference[1])
    elif rule in ("ident", "dot_ident"):
        _note_reference(node, (_token(node, 0),), analysis, scope)
        return 1
    elif rule == "ident_arg":
        return _function_cost(node, analysis, scope, depth)
    elif rule == "member_dot_arg":
        return _method_cost(node, analysis, scope, depth)
    elif rule == "member_object":
        raise _Refused("message construction (Type{field: value}) is not supported")
    elif rule == "dot_ident_arg":
        raise _Refused(f"a leading '.' before the function {_token(node, 0)!r} is not supported")
    own = 0 if _is_wrapper(node) else 1
    return own + sum(_cost(child, analysis, scope, depth) for child in _subtrees(node))


def _note_reference(leaf: _Tree, path: tuple[str, ...], analysis: _Analysis, scope: frozenset[str]) -> None:
    name = path[0]
    if leaf.data == "ident" and name in scope:
        return
    if name in analysis.names:
        analysis.paths.append(path)
    elif not (name in _TYPE_NAMES and len(path) == 1):
        available = ", ".join(sorted(analysis.names)) or "(none)"
        raise _Refused(f"unknown name {name!r}; available: {available}")


def _function_cost(node: _Tree, analysis: _Analysis, scope: frozenset[str], depth: int) -> int:
    name, args = _token(node, 0), _arguments(node)
    if name in ("has", "dyn"):
        if len(args) != 1:
            raise _Refused(f"{name}() takes exactly one argument, got {len(args)}")
    elif name in _MACROS or name in _UNSUPPORTED_MACROS:
        raise _Refused(f"{name}() is a macro; call it on a list, like items.{name}(x, ...)")
    elif name not in _FUNCTIONS:
        raise _Refused(f"unknown function {name!r}")
    if name == "matches" and len(args) == 2:
        _check_pattern(args[1])
    return 1 + sum(_cost(arg, analysis, scope, depth) for arg in args)


def _method_cost(node: _Tree, analysis: _Analysis, scope: frozenset[str], depth: int) -> int:
    target, name, args = node.children[0], _token(node, 1), _arguments(node)
    assert isinstance(target, lark.Tree)
    if name in _UNSUPPORTED_MACROS:
        raise _Refused(f"{name}() is not supported")
    if name in _MACROS:
        return _comprehension_cost(target, name, args, analysis, scope, depth)
    if name not in _FUNCTIONS:
        raise _Refused(f"unknown function {name!r}")
    if name == "matches" and len(args) == 1:
        _check_pattern(args[0])
    return 1 + _cost(target, analysis, scope, depth) + sum(_cost(arg, analysis, scope, depth) for arg in args)


def _comprehension_cost(
    target: _Tree, name: str, args: list[_Tree], analysis: _Analysis, scope: frozenset[str], depth: int
) -> int:
    variable = _unwrap(args[0], through_parens=False) if len(args) == 2 else None
    if variable is None or variable.data != "ident":
        raise _Refused(f"{name}() takes a variable name and an expression, like {name}(x, x > 0)")
    if depth + 1 > MAX_COMPREHENSION_DEPTH:
        raise _Refused(f"comprehensions are nested more than {MAX_COMPREHENSION_DEPTH} deep")
    elements = _list_literal_length(target)
    bound = COMPREHENSION_BOUND if elements is None else elements
    body = _cost(args[1], analysis, scope | {_token(variable, 0)}, depth + 1)
    return 1 + _cost(target, analysis, scope, depth) + bound * body


def _check_pattern(node: _Tree) -> None:
    pattern = _literal_value(node)
    if not isinstance(pattern, str):
        return
    try:
        re2.compile(pattern)
    except re2.error as error:
        detail = error.args[0].decode(errors="replace") if error.args and isinstance(error.args[0], bytes) else error
        raise _Refused(f"invalid regular expression {pattern!r}: {detail}") from None


# --- static result kind --------------------------------------------------------------------------------


def _check_static_kind(tree: _Tree, result: ResultKind) -> None:
    kinds = _kinds(tree)
    if result == "any" or kinds is None or kinds & _accepted(result):
        return
    gives = f"always gives {' or '.join(sorted(kinds))}" if len(kinds) <= 3 else f"can never give a {result}"
    raise _Refused(f"expected a {result} result, but this expression {gives}")


def _accepted(result: ResultKind) -> frozenset[str]:
    return {"bool": frozenset({"bool"}), "string": frozenset({"string"}), "number": _NUMERIC}.get(result, frozenset())


def _kinds(node: _Tree) -> frozenset[str] | None:
    """The kinds of value ``node`` can produce, or None when that is not known statically."""
    rule, arity, subtrees = node.data, len(node.children), _subtrees(node)
    if rule == "expr" and arity == 3:
        then, otherwise = _kinds(subtrees[1]), _kinds(subtrees[2])
        return None if then is None or otherwise is None else then | otherwise
    if rule in ("conditionalor", "conditionaland", "relation") and arity == 2:
        return frozenset({"bool"})
    if rule in ("addition", "multiplication") and arity == 2:
        left = subtrees[0].children[0]
        left_kinds = _kinds(left) if isinstance(left, lark.Tree) else None
        return _arithmetic_kinds(rule, left_kinds, _kinds(subtrees[1]))
    if rule == "unary" and arity == 2:
        return frozenset({"bool"}) if subtrees[0].data == "unary_not" else _NUMERIC | {"duration"}
    if rule == "literal":
        token = node.children[0]
        return frozenset({_LITERAL_KINDS[token.type]}) if isinstance(token, lark.Token) else None
    if rule in ("list_lit", "map_lit"):
        return frozenset({rule[:-4]})
    if rule in ("ident_arg", "member_dot_arg"):
        kind = _CALL_KINDS.get(_token(node, 0 if rule == "ident_arg" else 1))
        return None if kind is None else frozenset({kind})
    if _is_wrapper(node) or rule == "paren_expr":
        return _kinds(subtrees[0])
    return None


def _arithmetic_kinds(rule: str, left: frozenset[str] | None, right: frozenset[str] | None) -> frozenset[str]:
    if left is not None and left == right and len(left) == 1 and (rule == "addition" or left <= _NUMERIC):
        return left
    if rule == "multiplication":
        return _NUMERIC
    return _NUMERIC | {"string", "bytes", "list", "timestamp", "duration"}


# --- evaluation helpers --------------------------------------------------------------------------------


class _BoundedEvaluator(Evaluator):
    """celpy's tree walker, with every comprehension limited to COMPREHENSION_BOUND elements."""

    def sub_evaluator(self, ast: lark.Tree) -> Evaluator:  # type: ignore[type-arg]
        return _BoundedEvaluator(ast, activation=self.activation)

    def build_macro_eval(self, child: lark.Tree) -> Callable[[Any], Any]:  # type: ignore[type-arg]
        return _bounded(super().build_macro_eval(child))

    def build_ss_macro_eval(self, child: lark.Tree) -> Callable[[Any], Any]:  # type: ignore[type-arg]
        return _bounded(super().build_ss_macro_eval(child))


def _bounded(body: Callable[[Any], Any]) -> Callable[[Any], Any]:
    calls = 0

    def bounded(value: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > COMPREHENSION_BOUND:
            raise _TooManyElements
        return body(value)

    return bounded


def _bounded_addition() -> Callable[[Any, Any], Any]:
    """CEL's ``+`` for one evaluation, counting what it concatenates before building it."""
    add = base_functions["_+_"]
    built = 0

    def bounded(left: Any, right: Any) -> Any:
        nonlocal built
        if isinstance(left, (str, bytes, list)) and isinstance(right, (str, bytes, list)):
            built += len(left) + len(right)
            if built > CONCATENATION_BOUND:
                raise _TooMuchConcatenation
        return add(left, right)

    return bounded


def _select(value: Any, fields: _Fields | None) -> Any:
    """The parts of ``value`` reached by ``fields``, sharing (not copying) the selected subtrees."""
    if fields is None or not isinstance(value, dict):
        return value
    return {key: _select(value[key], sub) for key, sub in fields.items() if key in value}


def _field_tree(paths: Iterable[tuple[str, ...]]) -> _Fields:
    roots: _Fields = {}
    for path in paths:
        _insert(roots, path)
    return roots


def _insert(fields: _Fields, path: tuple[str, ...]) -> None:
    head, rest = path[0], path[1:]
    if head in fields and fields[head] is None:
        return
    if not rest:
        fields[head] = None
        return
    child = fields.setdefault(head, {})
    assert child is not None
    _insert(child, rest)


def _to_json(value: Any, source: str) -> Any:
    if value is None:
        return None
    if isinstance(value, CELEvalError):
        raise ExpressionError(source, _cel_reason(value))
    if isinstance(value, (bool, celtypes.BoolType)):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (celtypes.TimestampType, celtypes.DurationType)):
        # CEL's string() formatting ("2024-01-02T03:04:05Z", "90s"); celpy's annotation omits these types.
        return str(celtypes.StringType(value))  # type: ignore[arg-type]
    if isinstance(value, (list, tuple)):
        return [_to_json(item, source) for item in value]
    if isinstance(value, dict):
        return {_to_json(key, source): _to_json(item, source) for key, item in value.items()}
    raise ExpressionError(source, f"a {_kind_of(value)} result cannot be represented as JSON")


def _kind_of(value: Any) -> str:
    for cel_type, kind in _CEL_KINDS:
        if isinstance(value, cel_type):
            return kind
    return type(value).__name__


def _cel_reason(error: CELEvalError) -> str:
    """A one-line reason from a CELEvalError, without the activation dump celpy puts in its text."""
    text = str(error.args[0]) if error.args else "evaluation error"
    text = re.split(r" \(in (?:activation|container) ", text.splitlines()[0] if text else text)[0]
    text = re.sub(r"<class 'celpy\.celtypes\.(\w+?)Type'>", lambda match: match[1].lower(), text)
    text = re.sub(r"Token\('RULE', '(\w+)'\)", r"\1", text)
    detail = error.args[2] if len(error.args) > 2 else None
    if text in _GENERIC_REASONS and isinstance(detail, tuple) and len(detail) == 1:
        item = detail[0]
        text += ": " + (item.decode(errors="replace") if isinstance(item, bytes) else str(item))
    return _clip(text)


# --- tree helpers --------------------------------------------------------------------------------------


def _subtrees(node: _Tree) -> list[_Tree]:
    return [child for child in node.children if isinstance(child, lark.Tree)]


def _is_wrapper(node: _Tree) -> bool:
    return len(node.children) == 1 and isinstance(node.children[0], lark.Tree)


def _token(node: _Tree, index: int) -> str:
    token = node.children[index]
    assert isinstance(token, lark.Token)
    return str(token.value)


def _arguments(node: _Tree) -> list[_Tree]:
    lists = [child for child in node.children if isinstance(child, lark.Tree) and child.data == "exprlist"]
    return _subtrees(lists[0]) if lists else []


def _unwrap(node: _Tree, *, through_parens: bool = True) -> _Tree:
    """Descend through single-child precedence wrappers (and parentheses) to the node doing the work."""
    while (node.data in _WRAPPERS and _is_wrapper(node)) or (through_parens and node.data == "paren_expr"):
        child = node.children[0]
        assert isinstance(child, lark.Tree)
        node = child
    return node


def _reference(node: _Tree) -> tuple[_Tree, tuple[str, ...]] | None:
    """For a chain like ``event.data.x``: the root identifier node and the path; else None."""
    fields: list[str] = []
    while True:
        node = _unwrap(node, through_parens=False)
        if node.data == "member_dot":
            fields.append(_token(node, 1))
            target = node.children[0]
            assert isinstance(target, lark.Tree)
            node = target
        elif node.data in ("ident", "dot_ident"):
            return node, (_token(node, 0), *reversed(fields))
        else:
            return None


def _list_literal_length(node: _Tree) -> int | None:
    node = _unwrap(node)
    if node.data != "list_lit":
        return None
    return len(_arguments(node))


_NOT_LITERAL: Final = object()


def _literal_value(node: _Tree) -> Any:
    """The Python value of a literal (possibly parenthesised), or _NOT_LITERAL."""
    node = _unwrap(node)
    if node.data != "literal":
        return _NOT_LITERAL
    try:
        return _to_json(Evaluator(node, _BASE_ACTIVATION).evaluate(), "")
    except (CELEvalError, ExpressionError):
        return _NOT_LITERAL


def _conjuncts(node: _Tree) -> list[_Tree]:
    node = _unwrap(node)
    if node.data == "conditionaland" and len(node.children) == 2:
        left, right = _subtrees(node)
        return _conjuncts(left) + _conjuncts(right)
    return [node]


def _equality(node: _Tree, names: frozenset[str]) -> EqualityCondition | None:
    if node.data != "relation" or len(node.children) != 2:
        return None
    operator, right = _subtrees(node)
    if operator.data != "relation_eq":
        return None
    left_path, right_path = _root_path(operator.children[0], names), _root_path(right, names)
    if left_path is not None and right_path is not None:
        return EqualityCondition(left_path, right_path)
    path, other = (left_path, right) if left_path is not None else (right_path, operator.children[0])
    if path is None or not isinstance(other, lark.Tree):
        return None
    value = _literal_value(other)
    return None if value is _NOT_LITERAL else EqualityCondition(path, None, value)


def _root_path(node: _Tree | lark.Token, names: frozenset[str]) -> tuple[str, ...] | None:
    if not isinstance(node, lark.Tree):
        return None
    reference = _reference(_unwrap(node))
    return reference[1] if reference is not None and reference[1][0] in names else None


def _abbreviate(source: str, limit: int = 80) -> str:
    return source if len(source) <= limit else source[: limit - 3] + "..."


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
