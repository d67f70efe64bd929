"""Safe filter and eligibility expressions: one small language, three evaluators.

Eligibility rules in the NBA action catalog and marketers' target-list filters are text such
as ``churn_probability > 0.3 and abc_tier in ['A', 'B'] and days_since_last_contact >= 14``.
The text is tokenised and parsed here into a tree (it never reaches Python's ``eval``), and
the tree runs three ways with the same answer: vectorised over a pandas frame
(:meth:`Expression.evaluate_frame`), over one customer's mapping at request time
(:meth:`Expression.evaluate_row`, compiled once to a tree of closures) and as a DuckDB
``WHERE`` clause over large score tables (:meth:`Expression.to_sql`).

Language
--------
* literals: integers ``14``, floats ``0.3`` / ``1e-3``, strings ``'A'`` or ``"A"`` (a quote
  or a backslash inside is escaped with a backslash), ``true``, ``false``, ``null``;
* fields (columns / features): ``[A-Za-z_][A-Za-z0-9_]*``, case-sensitive; keywords
  (``and or not in is null true false``) are case-insensitive;
* arithmetic on numbers: ``+ - * /`` and unary ``-``; division is true division and
  ``x / 0`` is null;
* comparisons ``== != < <= > >=`` between two numbers, two strings (ordered by code point)
  or two booleans (``==`` / ``!=`` only); they do not chain (write ``1 < x and x < 3``);
* membership: ``x in [1, 2]``, ``x not in ['A', 'B']`` with a non-empty list of literals;
* null tests: ``x is null``, ``x is not null``;
* logic: ``not``, ``and``, ``or`` and parentheses.

Precedence, loosest first: ``or``; ``and``; ``not``; comparisons, ``in``, ``is``; ``+ -``;
``* /``; unary ``-``.

Nulls follow SQL's three-valued logic so that all evaluators agree with DuckDB: a missing
value (``None``, ``NaN``, ``pd.NA``) is null; arithmetic and comparisons with null are null
(unknown); ``false and null`` is false, ``true or null`` is true, ``not null`` is null; a row
whose whole condition is null is excluded, so ``not (x > 1)`` excludes rows where ``x`` is
null. ``x == null`` and ``null`` inside a list never match anything and are rejected (use
``is null``). Numbers are compared as doubles, so results agree exactly for integers up to
2**53. Field types are checked when known (:meth:`Expression.check` with ``types``, and
always from the dtypes in :meth:`Expression.evaluate_frame`); a field whose type only
supports null tests (a timestamp, say) may only be used with ``is null``. DuckDB resolves
quoted identifiers case-insensitively, so fields should not differ only by case.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

#: static type of a sub-expression; "any" is a field of unknown type, "opaque" one that only
#: supports null tests (timestamps...), "null" the literal ``null``
Kind = Literal["num", "str", "bool", "null", "any", "opaque"]

_KIND_NAMES: dict[str, str] = {
    "num": "a number",
    "str": "a string",
    "bool": "a boolean",
    "null": "null",
    "any": "a value",
    "opaque": "a value that only supports 'is null'",
}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
_PLURALS = {"num": "numbers", "str": "strings", "bool": "booleans"}
_SQL_OPS = {"==": "=", "!=": "<>", "and": "AND", "or": "OR"}
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "null", "true", "false"})
_INT64_MAX = 2**63 - 1

# binding powers of the Pratt parser, loosest first
_OR, _AND, _NOT, _COMPARISON, _SUM, _PRODUCT, _NEGATION = range(1, 8)
_INFIX_BP: dict[str, int] = {
    "or": _OR,
    "and": _AND,
    **dict.fromkeys((*_COMPARE, "in", "not", "is"), _COMPARISON),
    "+": _SUM,
    "-": _SUM,
    "*": _PRODUCT,
    "/": _PRODUCT,
}


class ExpressionError(ValueError):
    """A rule that cannot be parsed, checked or evaluated; the message points at the token."""

    def __init__(
        self, reason: str, source: str, start: int, end: int | None = None, hint: str = ""
    ) -> None:
        self.reason = reason
        self.source = source
        self.start = start
        self.end = max(end if end is not None else start + 1, start + 1)
        line_start = source.rfind("\n", 0, start) + 1
        line_end = source.find("\n", start)
        line = source[line_start : line_end if line_end >= 0 else len(source)]
        self.line = source.count("\n", 0, start) + 1
        self.column = start - line_start + 1
        where = f"line {self.line}, column {self.column}" if "\n" in source else ""
        where = where or f"column {self.column}"
        # keep tabs in the caret line so the carets stay under the token
        indent = "".join("\t" if c == "\t" else " " for c in line[: start - line_start])
        width = max(1, min(self.end, line_start + len(line)) - start)
        suffix = f" ({hint})" if hint else ""
        super().__init__(f"{reason} at {where}{suffix}\n  {line}\n  {indent}{'^' * width}")


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["num", "str", "name", "kw", "op", "eof"]
    #: operator text or lower-case keyword ("" for values and names), what the parser matches
    key: str
    text: str
    value: Any
    start: int
    end: int
    index: int


_TOKEN_RE = re.compile(
    r"""(?P<space>\s+)
      | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>==|!=|<=|>=|[<>+\-*/()\[\],])
      | (?P<quote>['"])""",
    re.VERBOSE,
)
_BAD_CHAR_HINTS = {
    "=": "use '==' to compare",
    "!": "use 'not' or '!='",
    "&": "use 'and'",
    "|": "use 'or'",
    ";": "an expression is a single condition",
}


def _tokenize(source: str) -> list[_Token]:
    """Split ``source`` into tokens, ending with an end-of-input token."""
    tokens: list[_Token] = []

    def add(kind: Any, key: str, text: str, value: Any, start: int, end: int) -> None:
        tokens.append(_Token(kind, key, text, value, start, end, len(tokens)))

    pos = 0
    while pos < len(source):
        match = _TOKEN_RE.match(source, pos)
        if match is None:
            char = source[pos]
            hint = _BAD_CHAR_HINTS.get(char, "")
            raise ExpressionError(f"unexpected character {char!r}", source, pos, hint=hint)
        group = match.lastgroup
        if group == "space":
            pos = match.end()
            continue
        end = match.end()
        if group == "quote":
            value, end = _read_string(source, pos)
            add("str", "", source[pos:end], value, pos, end)
        elif group == "num":
            add("num", "", match[0], _number(source, pos, end), pos, end)
        elif group == "name" and match[0].lower() in _KEYWORDS:
            add("kw", match[0].lower(), match[0], match[0], pos, end)
        elif group == "name":
            add("name", "", match[0], match[0], pos, end)
        else:
            add("op", match[0], match[0], None, pos, end)
        pos = end
    end_of_input = len(source.rstrip())
    add("eof", "", "end of input", None, end_of_input, end_of_input)
    return tokens


def _read_string(source: str, start: int) -> tuple[str, int]:
    """The value of the quoted string at ``start`` and the position after its closing quote."""
    quote = source[start]
    chars: list[str] = []
    pos = start + 1
    while pos < len(source):
        char = source[pos]
        if char == quote:
            return "".join(chars), pos + 1
        if char == "\\" and pos + 1 < len(source):
            escaped = source[pos + 1]
            if escaped not in "\\'\"":
                raise ExpressionError(
                    f"unknown escape '\\{escaped}' in a string",
                    source,
                    pos,
                    pos + 2,
                    hint="only \\\\, \\' and \\\" are allowed",
                )
            char = escaped
            pos += 1
        elif char == "\x00":
            raise ExpressionError("NUL character in a string", source, pos)
        chars.append(char)
        pos += 1
    raise ExpressionError("unterminated string", source, start, len(source))


def _number(source: str, start: int, end: int) -> int | float:
    """Parse a numeric literal, rejecting ``3abc``, integers beyond int64 and infinities."""
    if end < len(source) and (source[end].isalnum() or source[end] in "_."):
        stop = end
        while stop < len(source) and (source[stop].isalnum() or source[stop] in "_."):
            stop += 1
        raise ExpressionError(f"invalid number {source[start:stop]!r}", source, start, stop)
    text = source[start:end]
    if text.isdigit():
        if int(text) > _INT64_MAX:
            raise ExpressionError("integer literal too large", source, start, end)
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise ExpressionError("number out of range", source, start, end)
    return value


# --------------------------------------------------------------------------- tree


@dataclass(frozen=True, slots=True)
class _Lit:
    value: Any  # int | float | str | bool | None
    kind: Kind
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Unary:
    op: str  # "not" or "-"
    operand: _Node
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Binary:
    op: str  # a comparison, an arithmetic operator, "and" or "or"
    left: _Node
    right: _Node
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _In:
    operand: _Node
    items: tuple[_Lit, ...]
    negated: bool
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _IsNull:
    operand: _Node
    negated: bool
    start: int
    end: int


_Node = _Lit | _Field | _Unary | _Binary | _In | _IsNull


class _Parser:
    """Recursive descent with binding powers (Pratt) over the token list."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.pos = 0
        self.fields: list[_Field] = []

    def parse(self) -> _Node:
        node = self.expression(0)
        if self.peek().kind != "eof":
            raise self.unexpected(self.peek())
        return node

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def advance(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def error(self, reason: str, token: _Token, hint: str = "") -> ExpressionError:
        return ExpressionError(reason, self.source, token.start, token.end, hint)

    def expression(self, min_bp: int) -> _Node:
        left = self.prefix()
        while _INFIX_BP.get(self.peek().key, 0) > min_bp:
            token = self.advance()
            left = self.infix(left, token, _INFIX_BP[token.key])
        return left

    def prefix(self) -> _Node:
        token = self.advance()
        if token.kind in ("num", "str"):
            kind: Kind = "num" if token.kind == "num" else "str"
            return _Lit(token.value, kind, token.start, token.end)
        if token.kind == "name":
            node = _Field(token.value, token.start, token.end)
            self.fields.append(node)
            return node
        if token.key in ("true", "false", "null"):
            value = {"true": True, "false": False, "null": None}[token.key]
            return _Lit(value, "null" if value is None else "bool", token.start, token.end)
        if token.key == "(":
            return self.parenthesised(token)
        if token.key in ("not", "-"):
            operand = self.expression(_NOT if token.key == "not" else _NEGATION)
            return _Unary(token.key, operand, token.start, operand.end)
        raise self.expected_value(token)

    def parenthesised(self, opening: _Token) -> _Node:
        inner = self.expression(0)
        closing = self.advance()
        if closing.key == ")":
            return dataclasses.replace(inner, start=opening.start, end=closing.end)
        if closing.kind == "eof":
            raise self.error("unclosed '('", opening)
        raise self.unexpected(closing)

    def infix(self, left: _Node, token: _Token, bp: int) -> _Node:
        if token.key == "in" or token.key == "not":
            node: _Node = self.membership(left, negated=token.key == "not")
        elif token.key == "is":
            node = self.null_test(left)
        else:
            right = self.expression(bp)
            node = _Binary(token.key, left, right, left.start, right.end)
        if bp == _COMPARISON and _INFIX_BP.get(self.peek().key) == _COMPARISON:
            raise self.error(
                "comparisons cannot be chained", self.peek(), hint="join them with 'and'"
            )
        return node

    def membership(self, operand: _Node, negated: bool) -> _In:
        if negated and (token := self.advance()).key != "in":
            raise self.error("expected 'in' after 'not'", token)
        opening = self.advance()
        if opening.key != "[":
            raise self.error(
                "expected a list after 'in'", opening, hint="lists look like ['A', 'B']"
            )
        items: list[_Lit] = []
        while self.peek().key != "]":
            items.append(self.list_item(items))
            separator = self.advance()
            if separator.key == "]":
                return _In(operand, tuple(items), negated, operand.start, separator.end)
            if separator.kind == "eof":
                raise self.error("unclosed '['", opening)
            if separator.key != ",":
                found = separator.text
                raise self.error(f"expected ',' or ']' in the list, found {found!r}", separator)
        closing = self.advance()
        if not items:
            raise ExpressionError("empty list", self.source, opening.start, closing.end)
        return _In(operand, tuple(items), negated, operand.start, closing.end)

    def list_item(self, previous: list[_Lit]) -> _Lit:
        item = self.prefix()
        match item:
            case _Unary(op="-", operand=_Lit(kind="num", value=value)):
                item = _Lit(-value, "num", item.start, item.end)
        if not isinstance(item, _Lit):
            raise ExpressionError(
                "list items must be literal values", self.source, item.start, item.end
            )
        if item.kind == "null":
            raise ExpressionError(
                "null in a list never matches", self.source, item.start, item.end, "use 'is null'"
            )
        if previous and previous[0].kind != item.kind:
            raise ExpressionError(
                f"list mixes {_PLURALS[previous[0].kind]} and {_PLURALS[item.kind]}",
                self.source,
                item.start,
                item.end,
            )
        return item

    def null_test(self, operand: _Node) -> _IsNull:
        token = self.advance()
        negated = token.key == "not"
        if negated:
            token = self.advance()
        if token.key != "null":
            hint = "compare booleans with '== true'" if token.key in ("true", "false") else ""
            raise self.error("expected 'null' after 'is'", token, hint)
        return _IsNull(operand, negated, operand.start, token.end)

    def expected_value(self, token: _Token) -> ExpressionError:
        previous = self.tokens[token.index - 1] if token.index else None
        after = f" after {previous.text!r}" if previous else ""
        if token.kind == "eof":
            reason = f"expected a value{after}" if previous else "empty expression"
            return self.error(reason, token)
        hint = "a list is only allowed after 'in'" if token.key == "[" else ""
        return self.error(f"expected a value{after}, found {token.text!r}", token, hint)

    def unexpected(self, token: _Token) -> ExpressionError:
        if token.key in (")", "]"):
            return self.error(f"unmatched {token.text!r}", token)
        previous = self.tokens[token.index - 1]
        if token.key == "(":
            calls = previous.kind == "name"
            hint = "function calls are not supported" if calls else "missing 'and' or 'or'?"
        elif token.key == "[":
            hint = "a list is only allowed after 'in'"
        else:
            hint = "missing 'and' or 'or'?" if token.kind in ("name", "num", "str", "kw") else ""
        return self.error(f"unexpected {token.text!r}", token, hint)


# --------------------------------------------------------------------------- types


def _kind_of_type(type_name: str, field: str) -> Kind:
    """Map a contract / dtype / SQL type name to the kind the checker works with."""
    name = type_name.strip().lower()
    if name in ("bool", "boolean"):
        return "bool"
    if name in ("string", "str", "varchar", "text"):
        return "str"
    numeric = ("number", "numeric", "decimal", "double", "real", "integer", "bigint")
    if name in numeric or re.fullmatch(r"u?int\d*|float\d*", name):
        return "num"
    if name in ("timestamp", "datetime", "date", "time") or name.startswith("datetime64"):
        return "opaque"
    if name == "any":
        return "any"
    raise ValueError(
        f"unknown type {type_name!r} for field {field!r}; "
        "use one of number, int, float, string, bool, timestamp, any"
    )


_OBJECT_KINDS: dict[str, Kind] = {
    "string": "str",
    "boolean": "bool",
    "integer": "num",
    "floating": "num",
    "mixed-integer-float": "num",
    "decimal": "num",
    "empty": "any",
}


def _frame_kind(series: pd.Series) -> Kind:
    """The kind of a frame column, from its dtype (object columns by their values)."""
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return _frame_kind(pd.Series(dtype.categories)) if len(dtype.categories) else "any"
    if pd.api.types.is_object_dtype(dtype):
        return _OBJECT_KINDS.get(pd.api.types.infer_dtype(series, skipna=True), "opaque")
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_numeric_dtype(dtype):
        return "num"
    return "str" if pd.api.types.is_string_dtype(dtype) else "opaque"


class _TypeChecker:
    """Infers the kind of every node and rejects ill-typed rules, pointing at the culprit."""

    def __init__(self, source: str, kinds: Mapping[str, Kind]) -> None:
        self.source = source
        self.kinds = kinds

    def error(self, reason: str, node: _Node, hint: str = "") -> ExpressionError:
        return ExpressionError(reason, self.source, node.start, node.end, hint)

    def describe(self, node: _Node, kind: Kind) -> str:
        text = self.source[node.start : node.end]
        text = text if len(text) <= 40 else text[:37] + "..."
        return f"{text} ({_KIND_NAMES[kind]})"

    def condition(self, node: _Node) -> None:
        """The whole rule must be a condition."""
        self.operand(node, "bool", "the expression must be a condition (true or false)")

    def operand(self, node: _Node, wanted: Kind, what: str) -> Kind:
        """The kind of ``node``, which must be ``wanted`` (or unknown / null)."""
        kind = self.value(node)
        if kind not in (wanted, "any", "null"):
            raise self.error(f"{what}, got {self.describe(node, kind)}", node)
        return kind

    def value(self, node: _Node) -> Kind:
        """The kind of a node used as a value, which an opaque field cannot be."""
        kind = self.infer(node)
        if kind == "opaque":
            name = self.source[node.start : node.end]
            raise self.error(f"field {name!r} only supports 'is null' and 'is not null'", node)
        return kind

    def comparable(self, node: _Node, negated: bool) -> Kind:
        kind = self.value(node)
        if kind == "null":
            hint = "use 'is not null'" if negated else "use 'is null'"
            raise self.error("comparing with null is never true", node, hint)
        return kind

    def infer(self, node: _Node) -> Kind:
        match node:
            case _Lit():
                return node.kind
            case _Field():
                return self.kinds.get(node.name, "any")
            case _IsNull():
                self.infer(node.operand)
                return "bool"
            case _Unary(op="not"):
                self.operand(node.operand, "bool", "'not' needs a condition")
                return "bool"
            case _Unary():
                self.operand(node.operand, "num", "'-' needs a number")
                return "num"
            case _In():
                self.membership(node)
                return "bool"
            case _Binary(op="and" | "or"):
                for side in (node.left, node.right):
                    self.operand(side, "bool", f"'{node.op}' needs a condition on each side")
                return "bool"
            case _Binary(op=op) if op in _COMPARE:
                self.comparison(node)
                return "bool"
            case _Binary():
                for side in (node.left, node.right):
                    self.operand(side, "num", f"'{node.op}' needs numbers")
                return "num"
        raise AssertionError(node)

    def comparison(self, node: _Binary) -> None:
        left = self.comparable(node.left, node.op == "!=")
        right = self.comparable(node.right, node.op == "!=")
        if "any" not in (left, right) and left != right:
            raise self.error(
                f"cannot compare {self.describe(node.left, left)} "
                f"with {self.describe(node.right, right)}",
                node,
            )
        if node.op not in ("==", "!=") and "bool" in (left, right):
            raise self.error(f"cannot order booleans with '{node.op}'", node)

    def membership(self, node: _In) -> None:
        kind = self.comparable(node.operand, node.negated)
        items = node.items[0].kind
        if kind not in ("any", items):
            operand = self.describe(node.operand, kind)
            raise self.error(f"cannot look up {operand} in a list of {_PLURALS[items]}", node)


# --------------------------------------------------------------------------- frames


class _Vec(NamedTuple):
    """A column of three-valued results: ``values`` only count where ``valid`` (not null)."""

    values: np.ndarray
    valid: np.ndarray


class _FrameEvaluator:
    """Evaluates a type-checked tree over whole columns with numpy."""

    def __init__(self, frame: pd.DataFrame, kinds: Mapping[str, Kind]) -> None:
        self.frame = frame
        self.kinds = kinds
        self.size = len(frame)
        self.columns: dict[str, _Vec] = {}

    def null(self) -> _Vec:
        return _Vec(np.zeros(self.size, dtype=bool), np.zeros(self.size, dtype=bool))

    def vec(self, node: _Node) -> _Vec:
        match node:
            case _Lit():
                return self.literal(node.value)
            case _Field():
                if node.name not in self.columns:
                    self.columns[node.name] = self.column(node.name)
                return self.columns[node.name]
            case _IsNull():
                valid = self.vec(node.operand).valid
                return _Vec(valid if node.negated else ~valid, np.ones(self.size, dtype=bool))
            case _Unary(op="not"):
                inner = self.vec(node.operand)
                return _Vec(~inner.values, inner.valid)
            case _Unary():
                inner = self.vec(node.operand)
                return _Vec(-inner.values, inner.valid) if inner.valid.any() else self.null()
            case _In():
                return self.membership(node)
            case _Binary(op="and" | "or"):
                return _kleene(node.op, self.vec(node.left), self.vec(node.right))
            case _Binary():
                return self.binary(node.op, self.vec(node.left), self.vec(node.right))
        raise AssertionError(node)

    def literal(self, value: Any) -> _Vec:
        if value is None:
            return self.null()
        if isinstance(value, bool):
            dtype: Any = bool
        else:
            dtype = object if isinstance(value, str) else np.float64
        return _Vec(np.full(self.size, value, dtype=dtype), np.ones(self.size, dtype=bool))

    def column(self, name: str) -> _Vec:
        series = self.frame[name]
        valid = series.notna().to_numpy(dtype=bool)
        kind = self.kinds[name]
        if kind == "num":
            return _Vec(series.to_numpy(dtype=np.float64, na_value=np.nan), valid)
        if kind == "str":
            return _Vec(series.to_numpy(dtype=object, na_value=""), valid)
        if kind == "bool":
            return _Vec(series.to_numpy(dtype=bool, na_value=False), valid)
        return _Vec(np.zeros(self.size, dtype=bool), valid)  # only null tests reach these

    def membership(self, node: _In) -> _Vec:
        inner = self.vec(node.operand)
        if not inner.valid.any():
            return self.null()
        found = np.isin(inner.values, [item.value for item in node.items])
        return _Vec(~found if node.negated else found, inner.valid)

    def binary(self, op: str, left: _Vec, right: _Vec) -> _Vec:
        valid = left.valid & right.valid
        if op == "/":
            valid &= right.values != 0
        if not valid.any():  # also keeps null literals (bool placeholders) out of arithmetic
            return self.null()
        with np.errstate(all="ignore"):
            if op in _COMPARE:
                return _Vec(np.asarray(_COMPARE[op](left.values, right.values), dtype=bool), valid)
            divisor = np.where(valid, right.values, 1.0) if op == "/" else right.values
            return _Vec(_ARITH[op](left.values, divisor), valid)


def _kleene(op: str, left: _Vec, right: _Vec) -> _Vec:
    """SQL ``AND`` / ``OR``: a definite false (and) or true (or) side decides despite nulls."""
    left_true, right_true = left.valid & left.values, right.valid & right.values
    left_false, right_false = left.valid & ~left.values, right.valid & ~right.values
    if op == "and":
        true, false = left_true & right_true, left_false | right_false
    else:
        true, false = left_true | right_true, left_false & right_false
    return _Vec(true, true | false)


# --------------------------------------------------------------------------- rows

_Row = Mapping[str, Any]
_RowFn = Callable[[_Row], Any]
_NA = pd.NA


def _compile(node: _Node, source: str) -> _RowFn:
    """Compile a node to a closure returning True/False/None (or a number or string)."""
    match node:
        case _Lit(value=value):
            return lambda row: value
        case _Field():
            return _compile_field(node, source)
        case _IsNull():
            return _compile_null_test(_compile(node.operand, source), node.negated)
        case _Unary(op="not"):
            return _compile_not(_compile_condition(node.operand, source))
        case _Unary():
            return _compile_negation(_compile(node.operand, source))
        case _In():
            members = frozenset(item.value for item in node.items)
            return _compile_membership(_compile(node.operand, source), members, node.negated)
        case _Binary(op="and" | "or"):
            left, right = (
                _compile_condition(node.left, source),
                _compile_condition(node.right, source),
            )
            return _compile_and(left, right) if node.op == "and" else _compile_or(left, right)
        case _Binary():
            left, right = _compile(node.left, source), _compile(node.right, source)
            return _compile_binary(node.op, left, right)
    raise AssertionError(node)


def _compile_field(node: _Field, source: str) -> _RowFn:
    name = node.name

    def field(row: _Row) -> Any:
        try:
            value = row[name]
        except KeyError:
            close = difflib.get_close_matches(name, [str(key) for key in row], n=1)
            hint = f"did you mean {close[0]!r}?" if close else ""
            raise ExpressionError(
                f"the row has no field {name!r}", source, node.start, node.end, hint
            ) from None
        if value is None or value is _NA or value != value:  # value != value: NaN, NaT
            return None
        return value

    return field


def _compile_condition(node: _Node, source: str) -> _RowFn:
    """Like :func:`_compile`, but a bare field must hold a boolean (as in SQL)."""
    if not isinstance(node, _Field):
        return _compile(node, source)
    field = _compile_field(node, source)

    def flag(row: _Row) -> Any:
        value = field(row)
        if value is None or isinstance(value, bool | np.bool_):
            return value
        raise ExpressionError(
            f"field {node.name!r} is used as a condition but holds {value!r}",
            source,
            node.start,
            node.end,
        )

    return flag


def _compile_null_test(operand: _RowFn, negated: bool) -> _RowFn:
    return lambda row: (operand(row) is None) != negated


def _compile_not(operand: _RowFn) -> _RowFn:
    def not_(row: _Row) -> Any:
        value = operand(row)
        return None if value is None else not value

    return not_


def _compile_negation(operand: _RowFn) -> _RowFn:
    def negate(row: _Row) -> Any:
        value = operand(row)
        return None if value is None else -value

    return negate


def _compile_membership(operand: _RowFn, members: frozenset[Any], negated: bool) -> _RowFn:
    def member(row: _Row) -> Any:
        value = operand(row)
        return None if value is None else (value in members) != negated

    return member


def _compile_and(left: _RowFn, right: _RowFn) -> _RowFn:
    # both sides are always evaluated so a missing field fails whatever the data
    def and_(row: _Row) -> Any:
        a, b = left(row), right(row)
        if (a is not None and not a) or (b is not None and not b):
            return False
        return None if a is None or b is None else True

    return and_


def _compile_or(left: _RowFn, right: _RowFn) -> _RowFn:
    def or_(row: _Row) -> Any:
        a, b = left(row), right(row)
        if a or b:
            return True
        return None if a is None or b is None else False

    return or_


def _compile_binary(op: str, left: _RowFn, right: _RowFn) -> _RowFn:
    function = {**_COMPARE, **_ARITH}[op]
    if op == "/":

        def divide(row: _Row) -> Any:
            a, b = left(row), right(row)
            return None if a is None or b is None or b == 0 else a / b

        return divide

    def binary(row: _Row) -> Any:
        a, b = left(row), right(row)
        return None if a is None or b is None else function(a, b)

    return binary


# --------------------------------------------------------------------------- SQL


def _sql(node: _Node) -> str:
    """DuckDB SQL for a node; every compound is parenthesised so precedence never matters."""
    match node:
        case _Lit():
            return _sql_literal(node.value)
        case _Field():
            return '"' + node.name.replace('"', '""') + '"'
        case _IsNull():
            return f"({_sql(node.operand)} IS {'NOT ' if node.negated else ''}NULL)"
        case _In():
            items = ", ".join(_sql_literal(item.value) for item in node.items)
            return f"({_sql(node.operand)} {'NOT ' if node.negated else ''}IN ({items}))"
        case _Unary(op="not"):
            return f"(NOT {_sql(node.operand)})"
        case _Unary():
            return f"(-{_sql(node.operand)})"
        case _Binary(op="/"):
            return f"(CAST({_sql(node.left)} AS DOUBLE) / NULLIF({_sql(node.right)}, 0))"
        case _Binary():
            return f"({_sql(node.left)} {_SQL_OPS.get(node.op, node.op)} {_sql(node.right)})"
    raise AssertionError(node)


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # an exponent makes DuckDB read a DOUBLE (a plain 0.3 would be an exact DECIMAL)
        text = repr(value)
        return text if "e" in text else text + "e0"
    return "'" + str(value).replace("'", "''") + "'"


# --------------------------------------------------------------------------- API


class Expression:
    """A parsed, statically checked rule; build it with :func:`parse`."""

    __slots__ = ("_field_nodes", "_row", "_tree", "fields", "source")

    source: str
    fields: frozenset[str]

    def __init__(self, source: str, tree: _Node, field_nodes: Iterable[_Field]) -> None:
        self.source = source
        self._tree = tree
        self._field_nodes = tuple(field_nodes)
        self.fields = frozenset(node.name for node in self._field_nodes)
        self._row = _compile_condition(tree, source)

    def __repr__(self) -> str:
        return f"parse({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __reduce__(self) -> tuple[Callable[[str], Expression], tuple[str]]:
        # closures do not pickle; the source text is the whole state
        return parse, (self.source,)

    def check(self, known_fields: Iterable[str], types: Mapping[str, str] | None = None) -> None:
        """Fail early (at catalog load) on unknown fields and, given ``types``, type errors.

        ``types`` maps field names to contract or dtype names (``float``, ``int``, ``string``,
        ``bool``, ``timestamp``, ``Int64``, ``any``...); fields missing from it are unchecked.
        """
        known = list(dict.fromkeys(known_fields))
        self._check_fields(known)
        types = types or {}
        kinds = {name: _kind_of_type(types[name], name) for name in self.fields if name in types}
        _TypeChecker(self.source, kinds).condition(self._tree)

    def evaluate_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean mask over ``frame``'s rows (null conditions are False), types from dtypes."""
        self._check_fields([c for c in frame.columns if isinstance(c, str)])
        kinds = {name: _frame_kind(frame[name]) for name in self.fields}
        _TypeChecker(self.source, kinds).condition(self._tree)
        result = _FrameEvaluator(frame, kinds).vec(self._tree)
        return np.asarray(result.values & result.valid, dtype=bool)

    def evaluate_row(self, row: Mapping[str, Any]) -> bool:
        """Whether one customer's values satisfy the rule (a null condition is False).

        Values are trusted to have the types :meth:`check` was given; a runtime type clash
        (``'abc' < 1``) raises :class:`ExpressionError`.
        """
        try:
            result = self._row(row)
        except (TypeError, ArithmeticError) as exc:
            raise ExpressionError(
                f"cannot evaluate the row ({exc})", self.source, 0, len(self.source)
            ) from None
        return result is not None and bool(result)

    def to_sql(self) -> str:
        """DuckDB ``WHERE`` clause text with the same semantics as the other evaluators."""
        return _sql(self._tree)

    def _check_fields(self, known: list[str]) -> None:
        known_set = set(known)
        for node in self._field_nodes:
            if node.name not in known_set:
                close = difflib.get_close_matches(node.name, known, n=1)
                raise ExpressionError(
                    f"unknown field {node.name!r}",
                    self.source,
                    node.start,
                    node.end,
                    f"did you mean {close[0]!r}?" if close else "",
                )


def parse(source: str) -> Expression:
    """Parse and statically check a rule (literal types, shape); raises ExpressionError."""
    if not isinstance(source, str):
        raise TypeError(f"an expression must be a string, got {type(source).__name__}")
    parser = _Parser(source)
    tree = parser.parse()
    _TypeChecker(source, {}).condition(tree)
    return Expression(source, tree, parser.fields)
