"""A push and a pull of single-column updates of wide rows: patches against
whole rows.

    python benchmarks/field_patch.py
    python benchmarks/field_patch.py --url mysql+pymysql://root@127.0.0.1/bench

A SQLite node (the real :class:`SyncClient`) holds N rows of a 20-column
table, already on the server (a sync server in a thread on 127.0.0.1). Each
round the node's app changes one column of every row (one bulk
``update()``), the node pushes, and a second node pulls the change. Rounds
alternate between the two shapes of the same change: as patches (the key
and the changed column, protocol 2) and as whole rows (the same queue with
its column sets cleared, which is how every update travelled before; the
server then logs whole-row updates, so the pull gets whole rows too).
Printed: medians of the push and pull times and of their bytes on the wire
(request bytes of the push, response bytes of the pull), for each shape,
and the same-run baseline, a raw Core executemany ``UPDATE`` of that column
on the server database.
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import tempfile
import time
from typing import Any

import httpx
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from push_pull import served

from flask_reflectsync import ReflectSync, track
from flask_reflectsync.client import SyncClient

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_srv"
WIDTH = 19  # columns besides the key


class CountingTransport(httpx.HTTPTransport):
    """Counts the request bytes it sends and the response bytes it reads."""

    sent = 0
    received = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += len(request.read())
        response = super().handle_request(request)
        self.received += len(response.read())
        return response


def build(url: str) -> tuple[Flask, SQLAlchemy, Any]:
    app = Flask("field_patch_benchmark")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        SECRET_KEY="benchmark",
        REFLECTSYNC_OPEN_REGISTRATION=True,
    )
    db = SQLAlchemy(app)
    columns = {
        f"c{n}": sa.Column(sa.String(40) if n % 2 else sa.Integer, nullable=True)
        for n in range(1, WIDTH + 1)
    }
    Wide = type(
        "Wide",
        (db.Model,),
        {
            "__tablename__": "bench_wide",
            "id": sa.Column(sa.Integer, primary_key=True, autoincrement=False),
            **columns,
        },
    )
    track(Wide)
    ReflectSync(app, db)
    return app, db, Wide


def _value(n: int, round_: int, row: int) -> Any:
    return f"value {round_}-{row}-{n:02d}" if n % 2 else round_ * 1000 + row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app, db, Wide = build(args.url)
    with app.app_context():
        run(args, app, db, Wide)


def run(args: argparse.Namespace, app: Flask, db: SQLAlchemy, Wide: Any) -> None:
    db.drop_all()
    db.create_all()
    size = args.rows
    times: dict[str, list[float]] = {
        "patch": [],
        "whole": [],
        "raw": [],
        "pull patch": [],
        "pull whole": [],
    }
    sizes: dict[str, list[int]] = {
        "patch": [],
        "whole": [],
        "pull patch": [],
        "pull whole": [],
    }
    with served(app) as base, tempfile.TemporaryDirectory() as directory:
        engine = sa.create_engine(f"sqlite:///{directory}/node.db")
        Wide.__table__.metadata.create_all(engine, tables=[Wide.__table__])
        transport = CountingTransport()
        client = SyncClient(base, engine, models=[Wide], transport=transport)
        client.register()
        reader_engine = sa.create_engine(f"sqlite:///{directory}/reader.db")
        Wide.__table__.metadata.create_all(reader_engine, tables=[Wide.__table__])
        reading = CountingTransport()
        reader = SyncClient(
            base, reader_engine, models=[Wide], transport=reading, name="reader"
        )
        reader.register()
        with client.Session() as session:
            session.execute(
                sa.insert(Wide),
                [
                    {
                        "id": row,
                        **{f"c{n}": _value(n, 0, row) for n in range(1, WIDTH + 1)},
                    }
                    for row in range(1, size + 1)
                ],
            )
            session.commit()
        client.push()
        reader.pull()
        for round_ in range(1, args.rounds + 1):
            shape = "patch" if round_ % 2 else "whole"
            with client.Session() as session:
                session.execute(sa.update(Wide).values(c1=f"round {round_}"))
                session.commit()
            if shape == "whole":
                with engine.begin() as connection:  # the node's own log
                    connection.execute(
                        sa.text(
                            "UPDATE reflectsync_operations SET changed_columns = NULL"
                        )
                    )
            gc.collect()
            before = transport.sent
            start = time.perf_counter()
            result = client.push()
            times[shape].append(time.perf_counter() - start)
            sizes[shape].append(transport.sent - before)
            assert result.operations == size, result.operations
            gc.collect()
            before = reading.received
            start = time.perf_counter()
            pulled = reader.pull()
            times[f"pull {shape}"].append(time.perf_counter() - start)
            sizes[f"pull {shape}"].append(reading.received - before)
            assert pulled.operations == size, pulled.operations
            with db.engine.begin() as connection:
                gc.collect()
                start = time.perf_counter()
                connection.execute(
                    sa.update(Wide.__table__)
                    .where(Wide.__table__.c.id == sa.bindparam("key"))
                    .values(c3=sa.bindparam("value")),
                    [
                        {"key": row, "value": f"raw {round_}"}
                        for row in range(1, size + 1)
                    ],
                )
                times["raw"].append(time.perf_counter() - start)
        with db.engine.connect() as connection:
            final = connection.execute(
                sa.select(sa.func.count()).where(
                    Wide.__table__.c.c1 == f"round {args.rounds}"
                )
            ).scalar()
        assert final == size, final
        with reader_engine.connect() as connection:
            # The pulled column everywhere, and the others kept (not nulled).
            final = connection.execute(
                sa.select(sa.func.count()).where(
                    Wide.__table__.c.c1 == f"round {args.rounds}",
                    Wide.__table__.c.c2.is_not(None),
                    Wide.__table__.c.c19.is_not(None),
                )
            ).scalar()
        assert final == size, final
        client.close()
        reader.close()
        engine.dispose()
        reader_engine.dispose()
    db.drop_all()

    median = statistics.median
    raw = median(times["raw"])
    print(
        f"{size:,} single-column updates of {WIDTH + 1}-column rows "
        f"({args.url.split('://')[0]}), medians of {args.rounds // 2} rounds each"
    )
    print(f"  raw executemany UPDATE of one column: {raw * 1000:8.1f} ms")
    for shape in ("patch", "whole"):
        t, b = median(times[shape]), median(sizes[shape])
        label = "patches" if shape == "patch" else "whole rows"
        print(
            f"  push as {label:10}: {t * 1000:8.1f} ms ({t / raw:5.2f}x raw), "
            f"{b / 1e6:6.2f} MB on the wire"
        )
    ratio = median(sizes["whole"]) / median(sizes["patch"])
    speed = median(times["whole"]) / median(times["patch"])
    print(f"  patches: {ratio:.1f}x fewer bytes, {speed:.2f}x faster than whole rows")
    for shape in ("pull patch", "pull whole"):
        t, b = median(times[shape]), median(sizes[shape])
        label = "patches" if shape == "pull patch" else "whole rows"
        print(
            f"  pull as {label:10}: {t * 1000:8.1f} ms ({t / raw:5.2f}x raw), "
            f"{b / 1e6:6.2f} MB on the wire"
        )
    ratio = median(sizes["pull whole"]) / median(sizes["pull patch"])
    speed = median(times["pull whole"]) / median(times["pull patch"])
    print(
        f"  pulled patches: {ratio:.1f}x fewer bytes, "
        f"{speed:.2f}x the speed of whole rows"
    )


if __name__ == "__main__":
    main()
