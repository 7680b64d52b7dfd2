"""SQLite reflection pairs a dropped and a created table as a rename only
when they are one table (issue 12): SQLite hands a dropped table's root page
to the next table created, whatever its shape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from flask_reflectsync.reflection import (
    TableAltered,
    TableCreated,
    TableDropped,
    TableRenamed,
)

from .conftest import AppEnv

NAMES = ("rs_bite_a", "rs_bite_b", "rs_bite_c")


@pytest.fixture
def other(env: AppEnv, backend: str) -> Iterator[sa.Engine]:
    """Another program's connection to the app's SQLite file."""
    if backend != "sqlite":
        pytest.skip("root pages are SQLite's")
    engine = sa.create_engine(env.db.engine.url)
    try:
        yield engine
    finally:
        with engine.begin() as connection:
            for name in NAMES:
                connection.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        engine.dispose()


def _run(engine: sa.Engine, *statements: str) -> None:
    with engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)


def _root_page(engine: sa.Engine, name: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.exec_driver_sql(
                "SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)
            ).scalar_one()
        )


def _table_changes(changes: list[object]) -> list[tuple[str, str]]:
    kinds = (TableCreated, TableDropped, TableRenamed, TableAltered)
    return sorted(
        (type(c).__name__, c.table.name)  # type: ignore[attr-defined]
        for c in changes
        if isinstance(c, kinds)
    )


def test_a_reused_root_page_under_another_shape_is_a_drop_and_a_create(
    env: AppEnv, other: sa.Engine
) -> None:
    _run(other, "CREATE TABLE rs_bite_a (id INTEGER PRIMARY KEY, name TEXT)")
    env.sync.reflect()
    page = _root_page(other, "rs_bite_a")

    _run(
        other,
        "DROP TABLE rs_bite_a",
        "CREATE TABLE rs_bite_b (code TEXT, amount REAL)",
    )
    assert _root_page(other, "rs_bite_b") == page  # what the test is about
    changes = env.sync.reflect()

    assert _table_changes(changes) == [
        ("TableCreated", "rs_bite_b"),
        ("TableDropped", "rs_bite_a"),
    ]


def test_a_reused_root_page_with_the_same_column_names_of_other_types(
    env: AppEnv, other: sa.Engine
) -> None:
    _run(other, "CREATE TABLE rs_bite_a (id INTEGER PRIMARY KEY, name TEXT)")
    env.sync.reflect()
    page = _root_page(other, "rs_bite_a")

    _run(
        other,
        "DROP TABLE rs_bite_a",
        "CREATE TABLE rs_bite_b (id INTEGER PRIMARY KEY, name BLOB)",
    )
    assert _root_page(other, "rs_bite_b") == page
    assert _table_changes(env.sync.reflect()) == [
        ("TableCreated", "rs_bite_b"),
        ("TableDropped", "rs_bite_a"),
    ]


def test_a_rename_keeps_its_root_page_and_is_a_rename(
    env: AppEnv, other: sa.Engine
) -> None:
    _run(other, "CREATE TABLE rs_bite_a (id INTEGER PRIMARY KEY, name TEXT)")
    env.sync.reflect()
    _run(other, "ALTER TABLE rs_bite_a RENAME TO rs_bite_c")
    assert _table_changes(env.sync.reflect()) == [("TableRenamed", "rs_bite_c")]
