"""Bulk reading and writing of catalog rows straight through the DBAPI, for the few
places where SQLAlchemy's own per-row work would cost more than the database's: a reindex
of 100,000 files loads and inserts that many rows. The values stored are exactly those
Core inserts store (each column's own bind processor), and other databases than SQLite go
through Core as usual."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from datetime import date, datetime, timezone
from itertools import repeat
from typing import Any, Callable, Iterable, Mapping, Sequence

from sqlalchemy import insert

from imalinkd.catalog.models import FsPath


def is_pysqlite(conn) -> bool:
    """Whether ``conn`` is SQLite through the standard library's driver: the one these
    functions take the short way on."""
    return conn.dialect.name == "sqlite" and conn.dialect.driver == "pysqlite"


def fetch_tuples(conn, stmt) -> list[tuple]:
    """The rows of a Core select as plain tuples. On SQLite straight from the DBAPI cursor
    of the caller's transaction: SQLAlchemy's rows cost twice the query itself at 100,000
    rows. The values are then the driver's, without result processing: select only
    columns whose raw values are what the caller wants (bytes, integers, 0/1)."""
    if not is_pysqlite(conn):
        return [tuple(row) for row in conn.execute(stmt)]
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = [compiled.params[k] for k in compiled.positiontup]
    return conn.connection.driver_connection.cursor().execute(str(compiled), params).fetchall()


def fsdecoder():
    """``os.fsdecode`` for bytes only, without its per-call type dispatch."""
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return lambda raw: raw.decode(encoding, errors)


class RowWriter:
    """Bulk inserts into one table through the DBAPI cursor of the caller's transaction:
    one prepared statement and ``executemany`` over tuples. The values are converted a
    column at a time by the column type's own bind processor, so the stored values are
    exactly those an ORM or Core insert stores (a path's bytes are encoded directly, as
    :class:`FsPath` does), and the columns not given get their Python-side scalar defaults.

    ``convert`` replaces the conversion of some columns: a function from a column of the
    given values to a column of the values to bind."""

    def __init__(self, conn, table, keys: Iterable[str], convert: Mapping[str, Callable[[Sequence], Sequence]] | None = None) -> None:
        """Rows are tuples of the ``keys`` columns' values, in that order."""
        dialect = conn.dialect
        keys = list(keys)
        given = set(keys)
        self.columns = len(keys)
        self.convert: list[tuple[int, Callable[[Sequence], Sequence]]] = []
        for i, k in enumerate(keys):
            fn = (convert or {}).get(k) or column_processor(dialect, table.c[k])
            if fn is not None:
                self.convert.append((i, fn))
        defaults = [c for c in table.columns if c.key not in given and c.default is not None and c.default.is_scalar]
        self.defaults = []
        for c in defaults:
            fn = column_processor(dialect, c)
            self.defaults.append(fn([c.default.arg])[0] if fn is not None else c.default.arg)
        names = keys + [c.key for c in defaults]
        compiled = insert(table).compile(dialect=dialect, column_keys=names)
        self.sql = str(compiled)
        self.order = [names.index(k) for k in compiled.positiontup]
        self.cursor = conn.connection.driver_connection.cursor()

    def _params(self, rows: Sequence[tuple]) -> Iterable[tuple]:
        columns: list[Sequence] = list(zip(*rows)) or [() for _ in range(self.columns)]
        for i, fn in self.convert:
            columns[i] = fn(columns[i])
        columns += [repeat(v, len(rows)) for v in self.defaults]
        return zip(*[columns[i] for i in self.order])

    def insert_one(self, row: tuple) -> int:
        self.cursor.execute(self.sql, next(iter(self._params([row]))))
        return self.cursor.lastrowid

    def insert_many(self, rows: Sequence[tuple]) -> None:
        if rows:
            self.cursor.executemany(self.sql, self._params(rows))


def column_processor(dialect, column) -> Callable[[Sequence], Sequence] | None:
    """A function converting a column of Python values to what ``column``'s type binds."""
    if isinstance(column.type, FsPath):
        encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
        return lambda values: [None if v is None else v.encode(encoding, errors) for v in values]
    fn = column.type.dialect_impl(dialect).bind_processor(dialect)
    if fn is None:
        return None
    if column.type.python_type is datetime:
        fn = _memoized(fn)  # a session's files share timestamps
    return lambda values: list(map(fn, values))


# The form every timestamp imalinkd writes takes (storage.iso): UTC to the second.
CANONICAL_UTC = re.compile(r"(\d{4}-\d\d-\d\d)T((?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d)Z").fullmatch


def iso_column(dialect, column, parse: Callable[[Any], datetime | None]) -> Callable[[Sequence], Sequence]:
    """A column converter for a UTC datetime ``column`` given as the manifest's ISO text:
    what the column's type binds for ``parse`` of each text (a datetime or None). Text in the canonical form
    (``2026-01-01T10:00:00Z``) is rearranged into SQLite's stored form directly, without a
    datetime made and formatted for each file (a check at set-up confirms the stored form);
    any other text goes the long way."""
    process = column_processor(dialect, column) or (lambda values: list(values))
    probe = datetime(2001, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    direct = process([probe])[0] == "2001-02-03 04:05:06.000000"
    dates: dict[str, bool] = {}

    def valid_date(day: str) -> bool:
        try:
            ok = dates[day]
        except KeyError:
            try:
                date.fromisoformat(day)
                ok = True
            except ValueError:
                ok = False
            dates[day] = ok
        return ok

    def convert(values: Sequence) -> list:
        out = []
        for text in values:
            m = CANONICAL_UTC(text) if direct and type(text) is str else None
            if m is not None and valid_date(m[1]):
                out.append(f"{m[1]} {m[2]}.000000")
            else:
                out.append(process([parse(text)])[0])
        return out

    return convert


def _memoized(fn):
    memo: dict[Any, Any] = {}

    def process(value):
        try:
            return memo[value]
        except KeyError:
            memo[value] = out = fn(value)
            return out

    return process


@contextmanager
def indexes_rebuilt_after(cursor, table: str, filling: bool):
    """When ``filling`` an empty table with many rows, drop its secondary indexes for the
    inserts and create them again, from their own stored SQL, before the transaction ends:
    building an index once over sorted keys is several times faster than updating it row
    by row (the sha256 index especially, whose keys come in random order). SQLite's DDL is
    transactional, so if anything fails or the machine stops before the commit, the
    indexes are back as they were along with everything else."""
    if not filling or cursor.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:
        yield
        return
    indexes = cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                             "AND sql IS NOT NULL", (table,)).fetchall()
    for name, _sql in indexes:
        cursor.execute(f'DROP INDEX "{name}"')
    yield
    for _name, sql in indexes:
        cursor.execute(sql)
