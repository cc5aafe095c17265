"""The query library: the named, parameterised SQL answers in `sql/queries/`.

Each `sql/queries/NAME.sql` starts with a header of `--` lines, then the SQL:

    -- NAME: what the query answers, in one line
    -- more description; a bare `--` is a blank line
    -- param: NAME TYPE (required) what the parameter is
    -- param: NAME TYPE = DEFAULT what the parameter is
    -- columns: the, answer, columns (more `-- columns:` lines continue the list)

TYPE is one of String, Bool, UInt8..UInt64, Int8..Int64, Float32, Float64, Date,
DateTime('UTC') or DateTime64(P, 'UTC'); DEFAULT is a bare word or a '...' string. The SQL
names each parameter only as a ClickHouse query parameter, `{NAME:TYPE}` with the declared
TYPE, and its tables without a database: the client's database is the configured one.
A value the types admit but the query cannot answer for is refused in the SQL itself,
`WHERE (SELECT throwIf(..., 'parameter NAME: why')) = 0`, so that the file run by hand
refuses it too; `run` turns that error into a QueryError like the header's refusals.

This module parses the headers, turns text (the command line's) into typed values and
refuses missing, unknown or ill-typed parameters by name, and runs a query through
clickhouse-connect with the values as query parameters, which ClickHouse binds itself: no
value is ever formatted into SQL. It does not know what any query computes; `flowlog
query` (in `cli`) is its command line.
"""

from __future__ import annotations

import json
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.exceptions import DatabaseError

from ..config import ConfigError
from ..times import TIME_EXAMPLE, format_time, parse_time


def _query_dir() -> Path:
    """sql/queries in a source checkout; installed copies live under the prefix's share/."""
    checkout = Path(__file__).resolve().parent.parent.parent / "sql" / "queries"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "hubble-flowlog" / "sql" / "queries"


QUERY_DIR = _query_dir()

# Every query covers a time range, `from` inclusive to `until` exclusive, which the
# command line fills from --since / --from / --until.
RANGE_PARAMS = ("from", "until")

PLACEHOLDER = re.compile(r"\{(\w+):([^{}]+)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_RANGES = {f"{sign}Int{bits}": ((0, 2 ** bits - 1) if sign else (-2 ** (bits - 1), 2 ** (bits - 1) - 1))
               for sign in ("U", "") for bits in (8, 16, 32, 64)}
_DATETIME64 = re.compile(r"DateTime64\(([0-9]),'UTC'\)")
# A value the SQL itself refuses (`throwIf`, ClickHouse's error 395) with a message that
# starts "parameter NAME: ": a refusal like the header's, not a failure of the store. The
# why after it holds no colon: ClickHouse appends ": while executing ..." to it.
_REFUSED = re.compile(r"Code: 395\. DB::Exception: (parameter \w+: [^:]*)")
_BOOL = {"true": "true", "1": "true", "yes": "true", "on": "true",
         "false": "false", "0": "false", "no": "false", "off": "false"}


class QueryError(ConfigError):
    """A query file, a query name or a parameter refused; the CLI exits 2 as for bad usage."""


def canonical_type(type_: str) -> str:
    """The type without spaces, to compare: DateTime64(9, 'UTC') -> DateTime64(9,'UTC')."""
    return re.sub(r"\s+", "", type_)


def _is_supported(type_: str) -> bool:
    return (type_ in ("String", "Bool", "Float32", "Float64", "Date", "DateTime('UTC')") or type_ in _INT_RANGES
            or _DATETIME64.fullmatch(type_) is not None)


@dataclass(frozen=True)
class Param:
    name: str
    type: str             # as written in the header
    default: str | None   # None: required
    description: str

    @property
    def required(self) -> bool:
        return self.default is None

    def describe(self) -> str:
        return f"{self.name} ({self.type})"

    def convert(self, raw: str | bytes):
        """The value to bind for a text (or bytes) value; QueryError naming the parameter if ill-typed."""
        type_ = canonical_type(self.type)
        if type_ == "String":
            if isinstance(raw, bytes):
                return raw
            try:
                raw.encode("utf-8")
                return raw
            except UnicodeEncodeError:
                # Command-line bytes that are not UTF-8 arrive as surrogate escapes: bind the bytes.
                return raw.encode("utf-8", "surrogateescape")
        text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
        try:
            return self._convert(type_, text.strip())
        except (ValueError, OverflowError, KeyError):
            hint = f" ({TIME_EXAMPLE})" if type_.startswith(("Date", "DateTime")) else ""
            raise QueryError(f"parameter {self.name}: expected {self.type}{hint}, got {text!r}") from None

    @staticmethod
    def _convert(type_: str, text: str):
        if type_ in _INT_RANGES:
            if not re.fullmatch(r"[+-]?[0-9]+", text):
                raise ValueError(text)
            low, high = _INT_RANGES[type_]
            value = int(text)
            if not low <= value <= high:
                raise ValueError(text)
            return value
        if type_ in ("Float32", "Float64"):
            if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", text):
                raise ValueError(text)
            return float(text)
        if type_ == "Bool":
            return _BOOL[text.lower()]
        ns = parse_time(text)
        if type_ == "Date":
            return format_time(ns, 0)[:10]
        if type_ == "DateTime('UTC')":
            return format_time(ns, 0)
        return format_time(ns, int(_DATETIME64.fullmatch(type_).group(1)))


@dataclass(frozen=True)
class Query:
    name: str
    summary: str
    description: str
    params: tuple[Param, ...]
    columns: tuple[str, ...]
    sql: str              # the SQL after the header, sent as it is
    path: Path | None = None

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def bind(self, values: dict[str, str | bytes]) -> dict:
        """Typed values for every parameter, defaults filled in; QueryError naming what is wrong."""
        known = {p.name for p in self.params}
        unknown = sorted(set(values) - known)
        if unknown:
            raise QueryError(f"query {self.name}: unknown parameter {', '.join(unknown)} "
                             f"(parameters: {', '.join(p.name for p in self.params)})")
        missing = [p for p in self.params if p.required and p.name not in values]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise QueryError(f"query {self.name}: missing parameter{plural} "
                             f"{', '.join(p.describe() for p in missing)}")
        bound = {}
        for param in self.params:
            raw = values.get(param.name, param.default)
            try:
                bound[param.name] = param.convert(raw)
            except QueryError as err:
                raise QueryError(f"query {self.name}: {err}") from None
        return bound

    def run(self, client, values: dict[str, str | bytes], fmt: str = "JSONEachRow", database: str | None = None,
            settings: dict | None = None) -> bytes:
        """The answer in a ClickHouse output format, as ClickHouse wrote it."""
        parameters = self.bind(values)
        with _database(client, database):
            try:
                return client.raw_query(self.sql, parameters=parameters, settings=settings, fmt=fmt)
            except DatabaseError as err:
                refused = _REFUSED.search(str(err))
                if refused is None:
                    raise
                raise QueryError(f"query {self.name}: {refused.group(1)}") from None

    def rows(self, client, values: dict[str, str | bytes], database: str | None = None) -> list[dict]:
        """The answer as dicts (JSONEachRow: times as text with all their digits, 64-bit integers as numbers)."""
        out = self.run(client, values, "JSONEachRow", database,
                       settings={"output_format_json_quote_64bit_integers": 0})
        return [json.loads(line) for line in out.decode("utf-8", "surrogateescape").split("\n") if line]


@contextmanager
def _database(client, database: str | None):
    if database is None:
        yield
        return
    previous = client.database
    client.database = database
    try:
        yield
    finally:
        client.database = previous


def _read_type(text: str) -> tuple[str, str]:
    """A ClickHouse type at the start of text (balanced parentheses, quotes) and the rest."""
    depth, quoted = 0, False
    for index, char in enumerate(text):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char.isspace():
            return text[:index], text[index:].lstrip()
    return text, ""


def _read_default(text: str) -> tuple[str, str]:
    if text.startswith("'"):
        end = text.find("'", 1)
        if end < 0:
            raise ValueError("unterminated quote")
        return text[1:end], text[end + 1:].lstrip()
    word, _, rest = text.partition(" ")
    return word, rest.lstrip()


def parse(name: str, text: str, path: Path | None = None) -> Query:
    """A query from a file's text; QueryError naming the file and line of a bad header."""
    where = str(path) if path else name
    lines = text.splitlines()
    header = []
    for line in lines:
        if not line.startswith("--"):
            break
        header.append(line)
    sql = "\n".join(lines[len(header):]).strip()
    if not header:
        raise QueryError(f"{where}:1: no header (expected '-- {name}: what it answers')")
    first = header[0][2:].strip()
    if not first.startswith(f"{name}:") or not first[len(name) + 1:].strip():
        raise QueryError(f"{where}:1: the header starts '-- {name}: what it answers'")
    summary = first[len(name) + 1:].strip()
    description, params, columns = [], [], ()
    for number, line in enumerate(header[1:], start=2):
        body = line[2:].strip()
        if body.startswith("param:"):
            params.append(_parse_param(body[len("param:"):].strip(), f"{where}:{number}"))
        elif body.startswith("columns:"):
            columns += tuple(c.strip() for c in body[len("columns:"):].split(",") if c.strip())
        else:
            description.append(body)
    if not columns:
        raise QueryError(f"{where}: no '-- columns: ...' line in the header")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise QueryError(f"{where}: a parameter is declared twice")
    declared = {p.name: canonical_type(p.type) for p in params}
    used = set()
    for placeholder, type_ in PLACEHOLDER.findall(sql):
        if placeholder not in declared:
            raise QueryError(f"{where}: {{{placeholder}:{type_}}} is not declared in the header")
        if canonical_type(type_) != declared[placeholder]:
            raise QueryError(f"{where}: {{{placeholder}:{type_}}} but the header declares {placeholder} "
                             f"{declared[placeholder]}")
        used.add(placeholder)
    if set(declared) - used:
        raise QueryError(f"{where}: parameter {', '.join(sorted(set(declared) - used))} declared but not used")
    if not sql:
        raise QueryError(f"{where}: no SQL after the header")
    return Query(name, summary, "\n".join(description).strip(), tuple(params), columns, sql, path)


def _parse_param(text: str, where: str) -> Param:
    usage = "expected 'NAME TYPE (required) DESCRIPTION' or 'NAME TYPE = DEFAULT DESCRIPTION'"
    name, _, rest = text.partition(" ")
    if not _NAME.fullmatch(name):
        raise QueryError(f"{where}: param {name!r}: {usage}")
    type_, rest = _read_type(rest.lstrip())
    if not _is_supported(canonical_type(type_)):
        raise QueryError(f"{where}: param {name}: unsupported type {type_!r} (String, Bool, (U)Int8-64, "
                         "Float32/64, Date, DateTime('UTC'), DateTime64(P, 'UTC'))")
    if rest.startswith("(required)"):
        default, description = None, rest[len("(required)"):].strip()
    elif rest.startswith("="):
        try:
            default, description = _read_default(rest[1:].lstrip())
        except ValueError:
            raise QueryError(f"{where}: param {name}: {usage}") from None
    else:
        raise QueryError(f"{where}: param {name}: {usage}")
    param = Param(name, type_, default, description)
    if default is not None:
        try:
            param.convert(default)
        except QueryError as err:
            raise QueryError(f"{where}: default of {err}") from None
    return param


def load(directory: Path = QUERY_DIR) -> dict[str, Query]:
    """Every query in the directory, by name, in name order."""
    if not directory.is_dir():
        raise QueryError(f"no query library at {directory} (sql/queries/ beside the ingest package)")
    queries = {}
    for path in sorted(directory.glob("*.sql")):
        queries[path.stem] = parse(path.stem, path.read_text(encoding="utf-8"), path)
    return queries
