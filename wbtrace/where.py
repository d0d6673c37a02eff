"""The ``--where`` filter: a SQL expression over a step's columns and nothing else.

Trace data and filters travel between people (a colleague's command line, a notebook), so a filter
must not be a way to read files or reach the network: ``entropy IN (SELECT x FROM read_csv(...))``
or a URL. DuckDB's own parser (``json_serialize_sql``, which parses and runs nothing) turns the
expression into a tree, and every node must be on an allow-list: column references, literals,
comparisons, AND/OR/NOT, IN over a literal list, BETWEEN, IS [NOT] NULL, LIKE/ILIKE, CASE, CAST to a
plain type, arithmetic and a few scalar functions. No subqueries, table functions, aggregates,
windows, parameters or other statements. The expression then runs in DuckDB over the referenced
columns only, on a connection with external access disabled (a second wall, not the first).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from wbtrace.errors import BadInputError

ROW = "__wbtrace_row"
FUNCTIONS = frozenset({
    "+", "-", "*", "/", "//", "%", "abs", "round", "floor", "ceil", "ceiling", "sqrt", "ln", "log", "log2",
    "log10", "exp", "pow", "power", "sign", "least", "greatest", "isnan", "isinf", "isfinite",
    "length", "strlen", "lower", "upper", "trim", "contains", "starts_with", "ends_with", "prefix", "suffix",
    "regexp_matches", "nullif", "~~", "!~~", "~~*", "!~~*",  # LIKE, NOT LIKE, ILIKE, NOT ILIKE
})
OPERATORS = frozenset({"OPERATOR_NOT", "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL", "COMPARE_IN", "COMPARE_NOT_IN",
                       "OPERATOR_COALESCE"})
CAST_TYPES = frozenset({"BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "FLOAT", "REAL", "DOUBLE",
                        "VARCHAR", "TEXT", "STRING", "INT", "INT4", "INT8", "FLOAT4", "FLOAT8"})
ALLOWED = ("column names, literals, comparisons, AND/OR/NOT, IN (list), BETWEEN, IS NULL, LIKE, CASE, CAST, "
           "arithmetic and scalar functions such as abs, round, ln, length, lower, contains")


def _connect() -> Any:
    import duckdb

    return duckdb.connect(config={"enable_external_access": False})


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if not k.startswith("query_location")}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _parse(con: Any, expr: str) -> dict[str, Any]:
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [f"SELECT * FROM t WHERE ({expr})"]).fetchall()[0][0])
    if tree.get("error"):
        raise BadInputError(f"--where {expr!r}: {str(tree.get('error_message', 'cannot parse')).splitlines()[0]}")
    statements = tree.get("statements") or []
    base = json.loads(con.execute("SELECT json_serialize_sql('SELECT * FROM t WHERE TRUE')").fetchall()[0][0])
    node = statements[0]["node"] if len(statements) == 1 else {}
    rest = _strip({k: v for k, v in node.items() if k != "where_clause"})
    if rest != _strip({k: v for k, v in base["statements"][0]["node"].items() if k != "where_clause"}):
        raise BadInputError(f"--where {expr!r}: a filter is one expression over the step's columns "
                            "(no ORDER BY, LIMIT, other clauses or statements)")
    return node["where_clause"]


def _children(node: dict[str, Any]) -> Iterator[Any]:
    """The sub-expressions of an allowed node; raises for anything off the allow-list."""
    cls = node.get("class")
    if cls in ("CONJUNCTION", "OPERATOR"):
        if cls == "OPERATOR" and node.get("type") not in OPERATORS:
            raise _refuse(node.get("type"))
        yield from node.get("children", [])
    elif cls == "COMPARISON":
        yield node["left"]
        yield node["right"]
    elif cls == "BETWEEN":
        yield from (node["input"], node["lower"], node["upper"])
    elif cls == "CAST":
        _check_cast(node)
        yield node["child"]
    elif cls == "CASE":
        for check in node.get("case_checks", []):
            yield from (check["when_expr"], check["then_expr"])
        yield node["else_expr"]
    elif cls == "FUNCTION":
        yield from _function_args(node)
    elif cls not in ("CONSTANT", "COLUMN_REF"):
        raise _refuse(str(cls).lower().replace("_", " "))


def _check_cast(node: dict[str, Any]) -> None:
    type_expr = node.get("type_expr") or {}
    name = str(type_expr.get("type_name", (node.get("cast_type") or {}).get("id", ""))).upper()
    if name not in CAST_TYPES or type_expr.get("children"):
        raise _refuse(f"CAST to {name or '?'}")


def _function_args(node: dict[str, Any]) -> list[Any]:
    """A scalar function on the allow-list (no schema-qualified name, no aggregate modifiers)."""
    name = str(node.get("function_name", "")).lower()
    if name not in FUNCTIONS or node.get("schema") or node.get("catalog") or node.get("distinct") \
            or node.get("filter") or (node.get("order_bys") or {}).get("orders"):
        raise _refuse(f"function {name}()")
    return [a["expression"] if isinstance(a, dict) and "expression" in a else a
            for a in node.get("arguments", node.get("children", []))]


def _refuse(what: Any) -> BadInputError:
    return BadInputError(f"--where: {what} is not allowed in a filter; allowed: {ALLOWED}")


def _columns(node: Any) -> Iterator[str]:
    if not isinstance(node, dict):
        return
    if node.get("class") == "COLUMN_REF":
        names = node.get("column_names", [])
        if len(names) != 1:
            raise _refuse(f"qualified name {'.'.join(names)}")
        yield names[0]
        return
    for child in _children(node):
        yield from _columns(child)


class RowFilter:
    """A checked ``--where`` expression; `rows` evaluates it over a table of the columns it uses.

    Examples
    --------
    >>> import pyarrow as pa
    >>> f = RowFilter("entropy > 1 AND token LIKE 'a%'")
    >>> sorted(f.columns)
    ['entropy', 'token']
    >>> f.rows(pa.table({"entropy": [0.5, 2.0, 3.0], "token": ["ab", "ac", "b"]})).tolist()
    [1]
    >>> RowFilter("entropy IN (SELECT x FROM read_csv('/etc/passwd'))")
    Traceback (most recent call last):
    ...
    wbtrace.errors.BadInputError: --where: subquery is not allowed in a filter; allowed: ...
    """

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self._con = _connect()
        self.columns = frozenset(_columns(_parse(self._con, expr)))

    def check_columns(self, available: Iterable[str]) -> None:
        have = list(available)
        missing = sorted(self.columns - set(have))
        if missing:
            raise BadInputError(f"--where {self.expr!r}: no column {', '.join(missing)} (columns: {', '.join(have)})")

    def rows(self, table: pa.Table) -> np.ndarray:
        """Indices (int64, ascending) of the rows of ``table`` where the expression is true."""
        self.check_columns(table.column_names)
        cols = {c: _duckdb_type(table.column(c)) for c in self.columns}
        view = pa.table({**cols, ROW: pa.array(np.arange(table.num_rows, dtype=np.int64))})
        self._con.register("t", view)
        try:
            out = self._con.sql(f"SELECT {ROW} FROM t WHERE ({self.expr})").to_arrow_table()
        except Exception as e:  # duckdb.Error: a type mismatch, a bad cast
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BadInputError(f"--where {self.expr!r}: {first}") from None
        finally:
            self._con.unregister("t")
        rows = out.column(ROW).to_numpy()
        # DuckDB keeps insertion order here (preserve_insertion_order); sort only if it ever does not
        return rows if rows.size < 2 or bool(np.all(rows[1:] > rows[:-1])) else np.sort(rows)


def _duckdb_type(col: Any) -> Any:
    """DuckDB reads no float16 from Arrow: widen it (exact)."""
    return col.cast(pa.float32()) if pa.types.is_float16(col.type) else col
