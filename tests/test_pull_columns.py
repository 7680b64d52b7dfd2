"""How a pull page reads its rows column by column: the same values
SQLAlchemy's own rows hold, on every backend and for every plain type, and
integer keys parsed in one go only when every text is one integer."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from flask_reflectsync.server.pull import _columns, _in_order, _integer_keys

# datetime.UTC is Python 3.11; the suite runs on 3.10 too.
UTC = datetime.timezone.utc


def _values(n: int) -> dict[str, Any]:
    return {
        "id": n,
        "big": 2**40 + n,
        "name": None if n % 4 == 0 else f"näme {n}",
        "score": n / 3,
        "amount": None if n % 5 == 0 else decimal.Decimal(f"{n}.0100"),
        "flag": n % 2 == 0,
        "day": datetime.date(2024, 1, 1 + n % 28),
        "moment": datetime.datetime(2024, 3, 10, n % 24, 15, 30, 250000),
        "at": datetime.datetime(2024, 3, 10, 1, n % 60, tzinfo=UTC),
        "blob": bytes([n % 256, 0, 255]),
        "ref": uuid.UUID(int=n),
    }


def test_columns_hold_what_rows_hold(database_url: str) -> None:
    metadata = sa.MetaData()
    table = sa.Table(
        "pull_columns_sample",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("big", sa.BigInteger),
        sa.Column("name", sa.String(40)),
        sa.Column("score", sa.Float),
        sa.Column("amount", sa.Numeric(12, 4)),
        sa.Column("flag", sa.Boolean),
        sa.Column("day", sa.Date),
        sa.Column("moment", sa.DateTime),
        sa.Column("at", sa.DateTime(timezone=True)),
        sa.Column("blob", sa.LargeBinary),
        sa.Column("ref", sa.Uuid),
    )
    engine = sa.create_engine(database_url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    try:
        with engine.begin() as connection:
            connection.execute(table.insert(), [_values(n) for n in range(1, 60)])
        with Session(engine) as session:
            query = sa.select(table).where(table.c.id > 3).order_by(table.c.id)
            rows = session.execute(query).all()
            columns = _columns(session, query, ["id"])
            empty = _columns(session, query.where(table.c.id > 100), ["id"])
        assert columns == [list(c) for c in zip(*rows, strict=True)]
        assert len(columns[0]) == 56
        assert empty == [[] for _ in table.columns]
    finally:
        metadata.drop_all(engine)
        engine.dispose()


def test_string_columns_over_other_database_types(
    database_url: str, backend: str
) -> None:
    """A model may declare String over an enum or a domain of the database;
    their arrays mean nothing to the driver, and must not be split into
    characters."""
    if backend != "postgresql":
        pytest.skip("enums and domains as column types: PostgreSQL")
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS pull_columns_typed")
        connection.exec_driver_sql("DROP TYPE IF EXISTS pull_columns_mood")
        connection.exec_driver_sql("DROP DOMAIN IF EXISTS pull_columns_code")
        connection.exec_driver_sql(
            "CREATE TYPE pull_columns_mood AS ENUM ('ok', 'sad')"
        )
        connection.exec_driver_sql("CREATE DOMAIN pull_columns_code AS text")
        connection.exec_driver_sql(
            "CREATE TABLE pull_columns_typed (id int PRIMARY KEY, "
            "mood pull_columns_mood, code pull_columns_code)"
        )
        connection.exec_driver_sql(
            "INSERT INTO pull_columns_typed VALUES (1, 'ok', 'a,b'), (2, 'sad', 'c')"
        )
    table = sa.Table(
        "pull_columns_typed",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("mood", sa.String),
        sa.Column("code", sa.String),
    )
    try:
        with Session(engine) as session:
            query = sa.select(table).order_by(table.c.id)
            columns = _columns(session, query, ["id"])
        assert columns == [[1, 2], ["ok", "sad"], ["a,b", "c"]]
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE pull_columns_typed")
            connection.exec_driver_sql("DROP TYPE pull_columns_mood")
            connection.exec_driver_sql("DROP DOMAIN pull_columns_code")
        engine.dispose()


def test_rows_out_of_order_are_put_back_in_order() -> None:
    columns = [[2, 1, 1], [1, 9, 3], ["b", "c", "a"]]
    assert _in_order(columns, [0, 1]) == [[1, 1, 2], [3, 9, 1], ["a", "c", "b"]]
    ordered = [[1, 2], ["x", "y"]]
    assert _in_order(ordered, [0]) is ordered


def test_integer_keys_are_parsed_at_once_only_when_each_is_one_integer() -> None:
    assert _integer_keys(["[7]", "[-2]", "[10]"]) == [7, -2, 10]
    assert _integer_keys(["[1,2]"]) is None
    assert _integer_keys(["[1]", "[]", "[2][3]"]) is None
    assert _integer_keys(["[1]", "[true]"]) is None
    assert _integer_keys(["[1]", "[1.5]"]) is None
    assert _integer_keys(["[1]", '["a"]']) is None
