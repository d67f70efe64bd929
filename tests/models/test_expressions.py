"""The rule language: parsing, errors, safety, and frame / row / DuckDB agreement."""

from __future__ import annotations

import builtins
import pickle
import re
from collections.abc import Iterator, Sequence

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.expressions import Expression, ExpressionError, parse

ROW_ID = "_row_id"


@pytest.fixture(scope="module")
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    yield con
    con.close()


def sql_masks(
    con: duckdb.DuckDBPyConnection, exprs: list[Expression], frame: pd.DataFrame
) -> list[np.ndarray]:
    """Rows DuckDB keeps for ``WHERE <expr.to_sql()>``, as masks over ``frame``."""
    con.register("t", frame.assign(**{ROW_ID: np.arange(len(frame))}))
    masks = []
    try:
        for expr in exprs:
            kept = con.execute(f'SELECT "{ROW_ID}" FROM t WHERE {expr.to_sql()}').fetchall()
            mask = np.zeros(len(frame), dtype=bool)
            mask[[row[0] for row in kept]] = True
            masks.append(mask)
    finally:
        con.unregister("t")
    return masks


def row_mask(expr: Expression, frame: pd.DataFrame) -> np.ndarray:
    return np.array([expr.evaluate_row(r) for r in frame.to_dict("records")], dtype=bool)


def agreed_masks(
    con: duckdb.DuckDBPyConnection, sources: list[str], frame: pd.DataFrame
) -> list[list[bool]]:
    """Evaluate each rule with all three evaluators, insist they agree, return the masks."""
    exprs = [parse(source) for source in sources]
    results = []
    for expr, by_sql in zip(exprs, sql_masks(con, exprs, frame), strict=True):
        by_frame = expr.evaluate_frame(frame)
        assert by_frame.dtype == bool
        np.testing.assert_array_equal(row_mask(expr, frame), by_frame, err_msg=expr.source)
        np.testing.assert_array_equal(by_sql, by_frame, err_msg=f"{expr.source} -> {expr.to_sql()}")
        results.append(by_frame.tolist())
    return results


def evaluate_all(con: duckdb.DuckDBPyConnection, source: str, frame: pd.DataFrame) -> list[bool]:
    return agreed_masks(con, [source], frame)[0]


def caret(err: ExpressionError) -> tuple[int, int]:
    """(1-based column, width) of the caret line at the end of the message."""
    line = str(err).splitlines()[-1]
    return len(line) - len(line.lstrip(" ")) - 1, line.count("^")


# ------------------------------------------------------------------ precedence

ONE_ROW = pd.DataFrame({"unused": [1]})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("true or false and false", True),  # and binds tighter than or
        ("(true or false) and false", False),
        ("false and true or true", True),
        ("not false and false", False),  # not binds tighter than and
        ("not (false and false)", True),
        ("not 1 > 2", True),  # ... but looser than comparisons
        ("1 + 2 * 3 == 7", True),
        ("(1 + 2) * 3 == 9", True),
        ("10 - 4 - 3 == 3", True),  # left associative
        ("8 / 4 / 2 == 1", True),
        ("-2 * -3 == 6", True),
        ("- 2 - 3 == -5", True),
        ("-(2 - 3) == 1", True),
        ("1 + 1 in [2]", True),  # arithmetic binds tighter than in
        ("7 / 2 == 3.5", True),  # true division
        ("TRUE Or FALSE AND NOT true", True),  # keywords are case-insensitive
    ],
)
def test_precedence(duck: duckdb.DuckDBPyConnection, source: str, expected: bool) -> None:
    assert parse(source).evaluate_row({}) is expected
    assert evaluate_all(duck, source, ONE_ROW) == [expected]


def test_sql_parenthesises_the_tree() -> None:
    assert parse("a or b and not c").to_sql() == '("a" OR ("b" AND (NOT "c")))'
    assert parse("a - b - c > 0").to_sql() == '((("a" - "b") - "c") > 0)'


# ------------------------------------------------------------------ operators

FRAME = pd.DataFrame(
    {
        "x": pd.array([1, 2, None], dtype="Int64"),
        "y": pd.array([0.5, 2.0, 3.0], dtype="Float64"),
        "tier": pd.array(["A", "B", None], dtype="string"),
        "flag": pd.array([True, False, None], dtype="boolean"),
    }
)
T, F = True, False


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x == 1", [T, F, F]),
        ("x != 1", [F, T, F]),
        ("x < 2", [T, F, F]),
        ("x <= 2", [T, T, F]),
        ("x > 1", [F, T, F]),
        ("x >= 1", [T, T, F]),
        ("x + y > 2", [F, T, F]),
        ("x - y == 0.5", [T, F, F]),
        ("x * y >= 4", [F, T, F]),
        ("y / x == 0.5", [T, F, F]),
        ("-x < -1", [F, T, F]),
        ("tier == 'A'", [T, F, F]),
        ('tier != "A"', [F, T, F]),
        ("tier < 'B'", [T, F, F]),
        ("tier >= 'B'", [F, T, F]),
        ("flag", [T, F, F]),
        ("flag == false", [F, T, F]),
        ("flag != true", [F, T, F]),
        ("not flag", [F, T, F]),
        ("x in [1, 3]", [T, F, F]),
        ("x not in [1, 3]", [F, T, F]),
        ("y in [0.5, -1, 2,]", [T, T, F]),
        ("-y in [-0.5]", [T, F, F]),
        ("tier in ['B', 'C']", [F, T, F]),
        ("tier not in ['B']", [T, F, F]),
        ("flag in [false]", [F, T, F]),
        ("x is null", [F, F, T]),
        ("x is not null", [T, T, F]),
        ("tier IS NULL", [F, F, T]),
        ("x > 1 or tier == 'A'", [T, T, F]),
        ("x >= 1 and y > 1", [F, T, F]),
    ],
)
def test_operators(duck: duckdb.DuckDBPyConnection, source: str, expected: list[bool]) -> None:
    assert evaluate_all(duck, source, FRAME) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x > 0 or y > 1", [T, T, T]),  # true or null is true
        ("x > 0 and y > 5", [F, F, F]),
        ("not (x > 0 and y > 5)", [T, T, T]),  # null and false is false, so not -> true
        ("not (x > 0 or y > 5)", [F, F, F]),  # null or false is null, and not null is null
        ("not (x > 1)", [T, F, F]),  # a null condition excludes the row either way
        ("not not x > 1", [F, T, F]),
        ("(x > 0) == (y > 1)", [F, T, F]),
        ("(x > 0) != (y > 1)", [T, F, F]),
        ("x + null is null", [T, T, T]),
        ("null", [F, F, F]),
        ("not null or x == 1", [T, F, F]),
        ("x / 0 is null", [T, T, T]),  # division by zero is null
        ("not (y / (x - x) > 0)", [F, F, F]),
        ("y / (x - 1) > 0", [F, T, F]),
    ],
)
def test_three_valued_logic(
    duck: duckdb.DuckDBPyConnection, source: str, expected: list[bool]
) -> None:
    assert evaluate_all(duck, source, FRAME) == expected


def test_nan_none_and_na_are_null_in_every_path(duck: duckdb.DuckDBPyConnection) -> None:
    frame = pd.DataFrame({"v": [1.0, np.nan, 3.0], "s": ["a", None, "c"]})
    assert evaluate_all(duck, "v is null or s is null", frame) == [F, T, F]
    expr = parse("not (v > 0)")
    for missing in (None, float("nan"), np.float64("nan"), pd.NA):
        assert expr.evaluate_row({"v": missing}) is False
        assert parse("v is null").evaluate_row({"v": missing}) is True


def test_string_literals_are_escaped_and_quoted_safely(duck: duckdb.DuckDBPyConnection) -> None:
    frame = pd.DataFrame({"name": ["it's", "O'Brien", 'say "hi"', "a\\b", "'; drop table t; --"]})
    assert evaluate_all(duck, "name == 'it\\'s'", frame) == [T, F, F, F, F]
    assert evaluate_all(duck, 'name in ["O\'Brien", \'say "hi"\']', frame) == [F, T, T, F, F]
    assert evaluate_all(duck, "name == 'a\\\\b'", frame) == [F, F, F, T, F]
    assert evaluate_all(duck, "name == '\\'; drop table t; --'", frame) == [F, F, F, F, T]


def test_other_column_dtypes(duck: duckdb.DuckDBPyConnection) -> None:
    frame = pd.DataFrame(
        {
            "tier": pd.Categorical(["A", None, "C"]),
            "opted": pd.Series([True, None, False], dtype=object),
            "empty": pd.Series([None, None, None], dtype=object),
            "score": np.array([0.1, 0.9, 0.5]),
            "signup_at": pd.to_datetime(["2024-01-01", None, "2024-03-01"], utc=True),
        }
    )
    assert evaluate_all(duck, "tier in ['A', 'C'] and opted", frame) == [T, F, F]
    assert evaluate_all(duck, "empty > 1 or score > 0.4", frame) == [F, T, T]
    assert evaluate_all(duck, "signup_at is null", frame) == [F, T, F]


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("source", "reason", "column", "width"),
    [
        ("churn_probability >", "expected a value after '>'", 20, 1),
        ("churn_probability > 0.3 and  ", "expected a value after 'and'", 28, 1),
        ("a > )", "expected a value after '>', found ')'", 5, 1),
        ("(a > 1", "unclosed '('", 1, 1),
        ("((a > 1) or b", "unclosed '('", 1, 1),
        ("a in [1, 2", "unclosed '['", 6, 1),
        ("a > 1)", "unmatched ')'", 6, 1),
        ("a > 1 b", "unexpected 'b'", 7, 1),
        ("f(x) > 1", "unexpected '('", 2, 1),
        ("a = 1", "unexpected character '='", 3, 1),
        ("'abc", "unterminated string", 1, 4),
        ("a == 'x\\y'", "unknown escape '\\y' in a string", 8, 2),
        ("3abc > 1", "invalid number '3abc'", 1, 4),
        ("99999999999999999999 > a", "integer literal too large", 1, 20),
        ("1e999 > a", "number out of range", 1, 5),
        ("1 < a < 3", "comparisons cannot be chained", 7, 1),
        ("a in []", "empty list", 6, 2),
        ("a in [1, 'x']", "list mixes numbers and strings", 10, 3),
        ("a in [b]", "list items must be literal values", 7, 1),
        ("a in [null]", "null in a list never matches", 7, 4),
        ("a in 'x'", "expected a list after 'in'", 6, 3),
        ("a not b", "expected 'in' after 'not'", 7, 1),
        ("a is 1", "expected 'null' after 'is'", 6, 1),
        ("a == null", "comparing with null is never true", 6, 4),
        ("'a' > 1", "cannot compare 'a' (a string) with 1 (a number)", 1, 7),
        ("true < false", "cannot order booleans with '<'", 1, 12),
        ("a + 'x' > 1", "'+' needs numbers, got 'x' (a string)", 5, 3),
        ("1 and a", "'and' needs a condition on each side, got 1 (a number)", 1, 1),
        ("a + 1", "the expression must be a condition (true or false)", 1, 5),
        ("a in ['x'] and 1 in ['y']", "cannot look up 1 (a number) in a list of strings", 16, 10),
        ("", "empty expression", 1, 1),
    ],
)
def test_errors_point_at_the_offending_token(
    source: str, reason: str, column: int, width: int
) -> None:
    with pytest.raises(ExpressionError) as info:
        parse(source)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"{reason}") and f" at column {column}" in str(err)
    assert (err.column, caret(err)) == (column, (column, width))
    assert str(err).splitlines()[1] == f"  {source}"


def test_error_hints() -> None:
    with pytest.raises(ExpressionError, match=r"\(function calls are not supported\)"):
        parse("__import__('os')")
    with pytest.raises(ExpressionError, match=r"\(use 'is not null'\)"):
        parse("x != null")
    with pytest.raises(ExpressionError, match=r"\(join them with 'and'\)"):
        parse("1 < x <= 3")


def test_multiline_errors_name_the_line() -> None:
    with pytest.raises(ExpressionError) as info:
        parse("a > 1 and\n\tb >")
    err = info.value
    assert (err.line, err.column) == (2, 5)
    assert "at line 2, column 5" in str(err)
    assert str(err).splitlines()[-2:] == ["  \tb >", "  \t   ^"]


def test_misspelled_field_gets_a_suggestion() -> None:
    expr = parse("churn_prob > 0.5 and abc_tier == 'A'")
    with pytest.raises(ExpressionError) as info:
        expr.check(["churn_probability", "abc_tier", "clv_90d"])
    assert str(info.value).splitlines() == [
        "unknown field 'churn_prob' at column 1 (did you mean 'churn_probability'?)",
        "  churn_prob > 0.5 and abc_tier == 'A'",
        "  ^^^^^^^^^^",
    ]
    with pytest.raises(ExpressionError, match=r"unknown field 'abc_tier' at column 22\n"):
        parse("churn_prob > 0.5 and abc_tier == 'A'").check(["churn_prob", "zzz"])
    parse("churn_prob > 0.5").check(["churn_prob"])


@pytest.mark.parametrize(
    ("source", "types", "reason"),
    [
        ("abc_tier > 3", {"abc_tier": "string"}, "cannot compare abc_tier (a string) with 3"),
        ("flag and x > 1", {"flag": "float"}, "'and' needs a condition on each side"),
        ("signup_at > 3", {"signup_at": "timestamp"}, "only supports 'is null'"),
        ("a == b", {"a": "Int64", "b": "bool"}, "cannot compare a (a number) with b (a boolean)"),
        ("flag in [1]", {"flag": "boolean"}, "cannot look up flag (a boolean)"),
    ],
)
def test_check_with_types(source: str, types: dict[str, str], reason: str) -> None:
    expr = parse(source)
    expr.check(expr.fields)  # without types only the field names are checked
    with pytest.raises(ExpressionError, match=re.escape(reason)):
        expr.check(expr.fields, types)


def test_check_accepts_well_typed_rules_and_rejects_unknown_type_names() -> None:
    expr = parse("signup_at is not null and x * 2 > y and flag == true and s in ['a']")
    expr.check(expr.fields, {"signup_at": "timestamp", "x": "int", "y": "float", "flag": "bool"})
    with pytest.raises(ValueError, match="unknown type 'blob' for field 'x'"):
        expr.check(expr.fields, {"x": "blob"})


def test_frame_errors_name_the_field() -> None:
    with pytest.raises(ExpressionError, match=r"unknown field 'tir'.*did you mean 'tier'"):
        parse("tir == 'A'").evaluate_frame(FRAME)
    with pytest.raises(ExpressionError, match=r"cannot compare tier \(a string\) with 3"):
        parse("tier > 3").evaluate_frame(FRAME)


def test_row_errors() -> None:
    with pytest.raises(ExpressionError, match=r"no field 'churn_prob'.*did you mean 'churn_pro'"):
        parse("churn_prob > 1").evaluate_row({"churn_pro": 1.0})
    with pytest.raises(ExpressionError, match="cannot evaluate the row"):
        parse("tier < 1").evaluate_row({"tier": "A"})
    with pytest.raises(ExpressionError, match="field 'score' is used as a condition"):
        parse("score or false").evaluate_row({"score": 0.7})
    # both sides of and/or are evaluated, so a missing field fails whatever the data
    with pytest.raises(ExpressionError, match="no field 'b'"):
        parse("a > 1 and b > 1").evaluate_row({"a": 0})


# ------------------------------------------------------------------ safety

MALICIOUS = [
    "__import__('os')",
    "__import__('os').system('rm -rf /')",
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "a; drop table x",
    "a == 1; DROP TABLE t",
    "a == 1 --",
    "a == 1 /* x */",
    "eval('1 + 1')",
    "exec('import os')",
    "lambda: 1",
    "[x for x in ()]",
    "a.b == 1",
    "x if y else z",
    "open('/etc/passwd')",
    '"a" == 1 or "b"',
    "`ls`",
    "a == $1",
]


@pytest.mark.parametrize("source", MALICIOUS)
def test_malicious_inputs_are_rejected(source: str) -> None:
    with pytest.raises(ExpressionError):
        parse(source)


def test_sql_comment_markers_are_just_minus_signs(duck: duckdb.DuckDBPyConnection) -> None:
    # '--' is two minus signs in the language; the SQL never contains a comment marker
    expr = parse("a == 1 -- comment")
    assert "--" not in expr.to_sql()
    frame = pd.DataFrame({"a": [3, 1], "comment": [2, 0]})
    assert evaluate_all(duck, expr.source, frame) == [T, T]


def test_never_calls_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("eval/exec called")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, refuse)
    expr = parse("x * 2 > 1 and tier in ['A'] and not flag")
    assert expr.evaluate_row({"x": 1, "tier": "A", "flag": False}) is True
    assert expr.evaluate_frame(FRAME).tolist() == [F, F, F]


def test_expressions_pickle_and_compare_by_source() -> None:
    expr = parse("x > 1 or tier == 'A'")
    copy = pickle.loads(pickle.dumps(expr))
    assert copy == expr and hash(copy) == hash(expr) and copy is not expr
    assert copy.evaluate_frame(FRAME).tolist() == expr.evaluate_frame(FRAME).tolist()
    assert expr.fields == frozenset({"x", "tier"})
    assert parse("x > 1") != expr


# ------------------------------------------------------------------ property test

NUM_FIELDS = ["i1", "i2", "f1", "f2"]
NUM_LITERALS = ["0", "1", "2", "3", "-1", "0.5", "2.5", "-1.5", "1e-3"]
STR_LITERALS = ["''", "'a'", '"b"', "'ab'", "'B'", "'é'", "'it\\'s'", "'a\\\\b'"]
STR_VALUES = ["", "a", "b", "ab", "B", "é", "it's", "a\\b", None]
CMP = ["==", "!=", "<", "<=", ">", ">="]


def numbers(depth: int) -> st.SearchStrategy[str]:
    atom = st.sampled_from([*NUM_FIELDS, *NUM_LITERALS, "(f1 * null)"])
    if depth == 0:
        return atom
    sub = numbers(depth - 1)
    return st.one_of(
        atom,
        st.builds("({} {} {})".format, sub, st.sampled_from("+-*/"), sub),
        # divisors that are often zero: division by zero must be null everywhere
        st.builds("({} / {})".format, sub, st.sampled_from(["0", "i1", "i2", "f1", "(i2 - i2)"])),
        sub.map("-{}".format),
    )


def membership(values: st.SearchStrategy[str], items: list[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda value, negated, chosen: (
            f"{value} {'not in' if negated else 'in'} [{', '.join(chosen)}]"
        ),
        values,
        st.booleans(),
        st.lists(st.sampled_from(items), min_size=1, max_size=3),
    )


def conditions(depth: int) -> st.SearchStrategy[str]:
    strings = st.sampled_from(["s1", "s2", *STR_LITERALS])
    flags = st.sampled_from(["b1", "b2", "(i1 > 0)"])
    base = st.one_of(
        st.builds("{} {} {}".format, numbers(2), st.sampled_from(CMP), numbers(2)),
        st.builds("{} {} {}".format, strings, st.sampled_from(CMP), strings),
        st.builds("{} {} {}".format, flags, st.sampled_from(["==", "!="]), flags | st.just("true")),
        membership(numbers(1), NUM_LITERALS),
        membership(st.sampled_from(["s1", "s2"]), STR_LITERALS),
        membership(st.sampled_from(["b1", "b2"]), ["true", "false"]),
        st.builds(
            "{} is {}null".format, numbers(1) | strings | flags, st.sampled_from(["", "not "])
        ),
        st.sampled_from(["b1", "b2", "true", "false", "null"]),
    )
    if depth == 0:
        return base
    sub = conditions(depth - 1)
    return st.one_of(
        base,
        st.builds("({} {} {})".format, sub, st.sampled_from(["and", "or"]), sub),
        sub.map("not {}".format),
    )


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(0, 6))

    def column(values: Sequence[object]) -> list[object]:
        return draw(st.lists(st.sampled_from(values), min_size=n, max_size=n))

    return pd.DataFrame(
        {
            "i1": pd.array(column([-2, -1, 0, 1, 2, 3, None]), dtype="Int64"),
            "i2": np.array(column([-1, 0, 1, 2]), dtype=np.int64),
            "f1": pd.array(column([-1.5, 0.0, 0.25, 2.0, 1e-3, None]), dtype="Float64"),
            "f2": np.array(column([0.5, -2.0, 3.0, np.nan]), dtype=np.float64),
            "s1": pd.array(column(STR_VALUES), dtype="string"),
            "s2": pd.Series(column(STR_VALUES), dtype="str"),
            "b1": pd.array(column([True, False, None]), dtype="boolean"),
            "b2": np.array(column([True, False]), dtype=bool),
        }
    )


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(frame=frames(), source=conditions(2))
def test_frame_row_and_duckdb_agree(
    duck: duckdb.DuckDBPyConnection, frame: pd.DataFrame, source: str
) -> None:
    # the rule and its negation: together they reveal the hidden true/false/null result
    masks = agreed_masks(duck, [source, f"not ({source})"], frame)
    assert not any(a and b for a, b in zip(*masks, strict=True))
