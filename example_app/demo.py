"""A self-contained demo on SQLite: edit tracked models, then show the
operations log and the versions the server handed out.

Run from the repository root::

    python -m example_app.demo
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import sqlalchemy as sa

from .server import Observation, Site, create_app, db


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'survey.db'}"
        app = create_app({"SQLALCHEMY_DATABASE_URI": url})
        with app.app_context():
            run_demo()
            db.session.remove()
            db.engine.dispose()


def run_demo() -> None:
    print("1. A surveyor records a site with two observations (one transaction).")
    marsh = Site(name="North marsh")
    marsh.observations = [
        Observation(species="heron", count=3),
        Observation(species="egret", count=1),
    ]
    db.session.add(marsh)
    db.session.commit()

    print("2. The heron count is corrected; the egret count is set to what it was.")
    heron, egret = marsh.observations
    heron.count = 4
    egret.count = 1  # no real change: nothing is logged for it
    db.session.commit()

    print("3. A mistaken entry is added inside a savepoint and rolled back.")
    with db.session.begin_nested() as savepoint:
        db.session.add(Observation(site=marsh, species="dodo", count=1))
        db.session.flush()
        savepoint.rollback()
    db.session.commit()

    print("4. A bulk UPDATE through the session is captured row by row.")
    db.session.execute(
        sa.update(Observation).where(Observation.site_id == marsh.id).values(count=0)
    )
    db.session.commit()

    print("5. The egret observation is deleted.")
    db.session.delete(egret)
    db.session.commit()

    print()
    print("The operations log (version, table, primary key, command):")
    tables = db.metadata.tables
    versions, operations = (
        tables["reflectsync_versions"],
        tables["reflectsync_operations"],
    )
    rows = db.session.execute(
        sa.select(
            versions.c.number,
            operations.c.table_name,
            operations.c.row_key,
            operations.c.command,
        )
        .join(versions, versions.c.id == operations.c.version_id)
        .order_by(versions.c.number, operations.c.id)
    ).all()
    names = {"i": "insert", "u": "update", "d": "delete"}
    for number, table, key, command in rows:
        print(
            f"  v{number:<3} {table:<12} {json.dumps(json.loads(key)):<6} "
            f"{names[command]}"
        )
    numbers = sorted({number for number, *_ in rows})
    print()
    print(
        f"{len(rows)} operations in versions {numbers}: one version per committed "
        "transaction, none for the rolled-back savepoint."
    )


if __name__ == "__main__":
    main()
