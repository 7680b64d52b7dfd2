"""Reading rows of one tracked model with simple filters.

``model=<table>`` names a tracked table; every other parameter is a filter
``<column>=<value>`` (equality) or ``<column>__<op>=<value>`` with ``op`` one
of ``ne``, ``lt``, ``lte``, ``gt``, ``gte``, ``in`` (comma-separated values)
and ``isnull`` (``true``/``false``). ``limit`` and ``offset`` page through the
rows in primary-key order. Untracked tables and unknown columns are refused,
and so are columns kept out of sync (``track(exclude=...)``), which answers
never hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import NotFoundError, ValidationError
from ..tracking import TrackedTable
from ..wire.codec import ColumnCodec, stores_time_zones, synced_codecs
from ..wire.messages import BIGINT_MAX
from .pull_scopes import Share
from .schema import TrackedSchema, excluded_column

#: Query parameters that are not filters.
RESERVED = ("model", "limit", "offset")

_OPERATORS: dict[str, Callable[[sa.ColumnElement[Any], Any], Any]] = {
    "eq": lambda column, value: column == value,
    "ne": lambda column, value: column != value,
    "lt": lambda column, value: column < value,
    "lte": lambda column, value: column <= value,
    "gt": lambda column, value: column > value,
    "gte": lambda column, value: column >= value,
    "in": lambda column, values: column.in_(values),
    "isnull": lambda column, flag: column.is_(None) if flag else column.isnot(None),
}


def query(
    session: Session,
    schema: TrackedSchema,
    params: Mapping[str, Sequence[str]],
    *,
    page_size: int,
    share: Share | None = None,
) -> dict[str, Any]:
    """Rows of one tracked model matching every filter (and in the node's
    ``share``, when given).

    Only reads; the caller ends the transaction.

    :param params: the query string, each name with all its values.
    :param page_size: the largest ``limit`` allowed (and the default).
    :return: ``{"model", "rows", "next_offset"}``; ``rows`` are objects by
        column name in the codec's JSON form, ``next_offset`` is ``null`` on
        the last page.
    :raises NotFoundError: (404) if ``model`` is not a tracked table.
    :raises ValidationError: (400) for unknown columns, operators or values.
    """
    values = {name: list(items) for name, items in params.items()}
    for name, items in values.items():
        if len(items) != 1:
            raise ValidationError(
                f"Parameter {name!r} is given {len(items)} times; give it once "
                "(use <column>__in=a,b for several values)."
            )
    single = {name: items[0] for name, items in values.items()}
    model = single.get("model")
    if not model:
        raise ValidationError("Name the table to read: ?model=<table>.")
    info = schema.get(model)
    if info is None:
        raise NotFoundError(
            f"No tracked model {model!r}; the server serves "
            f"{', '.join(sorted(schema.tables)) or 'no tables'}.",
            code="query.unknown_model",
        )
    limit = _count(single.get("limit"), "limit", page_size)
    if not 1 <= limit <= page_size:
        raise ValidationError(f"limit must be between 1 and {page_size}.")
    offset = _count(single.get("offset"), "offset", 0)

    aware = stores_time_zones(session.get_bind(clause=info.table).dialect)
    codecs = synced_codecs(info, aware_storage=aware)
    statement = sa.select(*info.synced_columns)
    for name, text in single.items():
        if name not in RESERVED:
            statement = statement.where(_condition(info, codecs, name, text))
    condition = None if share is None else share.condition(info)
    if condition is not None:
        statement = statement.where(condition)
    statement = statement.order_by(*info.pk_columns).limit(limit + 1).offset(offset)
    rows = session.execute(statement).all()
    more = len(rows) > limit
    encoded = [
        {
            codec.name: codec.to_json(value)
            for codec, value in zip(codecs.values(), row, strict=True)
        }
        for row in rows[:limit]
    ]
    return {
        "model": model,
        "rows": encoded,
        "next_offset": offset + limit if more else None,
    }


def _count(text: str | None, name: str, default: int) -> int:
    """A count from the query string: ASCII digits, at most a 64-bit
    integer (what the databases take in LIMIT and OFFSET)."""
    if text is None:
        return default
    digits = text.isascii() and text.isdecimal() and len(text) <= 40
    if not digits or int(text) > BIGINT_MAX:
        raise ValidationError(
            f"{name} must be an integer from 0 to {BIGINT_MAX}, got "
            f"{text[:40]!r}."
        )
    return int(text)


def _condition(
    info: TrackedTable, codecs: Mapping[str, ColumnCodec], name: str, text: str
) -> Any:
    table = info.table
    column_name, operator = name, "eq"
    head, separator, tail = name.rpartition("__")
    if separator and tail in _OPERATORS:
        column_name, operator = head, tail
    if column_name in info.excluded:
        raise excluded_column(info.name, column_name, f"filter {name}")
    codec = codecs.get(column_name)
    if codec is None:
        raise ValidationError(
            f"Unknown column {column_name!r} in table {table.name!r}; it has "
            f"{', '.join(codecs)}."
        )
    where = f"filter {name}"
    value: Any
    if operator == "isnull":
        value = {"true": True, "false": False}.get(text.lower())
        if value is None:
            raise ValidationError(f"{where} must be true or false.")
    elif operator == "in":
        value = [codec.parse_text(part, where) for part in text.split(",")]
    else:
        value = codec.parse_text(text, where)
    return _OPERATORS[operator](table.c[column_name], value)
