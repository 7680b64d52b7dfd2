"""PostgreSQL: identities are oids, read from ``pg_catalog`` in one round trip.

The fingerprint of a schema's tables is built from the row versions
(``xmin``) and counts of the catalog rows that describe them: ``pg_class``
(the relations and their indexes), ``pg_attribute``, ``pg_attrdef``,
``pg_constraint`` (keys and CHECK constraints), ``pg_index``, ``pg_rewrite``
(view queries), ``pg_trigger`` and ``pg_description``. Every DDL statement
that changes what the catalog shows inserts, updates or deletes one of those
rows, and an update always writes a new ``xmin``; the in-place updates
PostgreSQL does itself (``VACUUM``, ``ANALYZE`` statistics) keep it. The
same sums per table are its *version*: a refresh describes again only the
tables whose version changed (and those whose foreign keys or view queries
name one of them or another schema). A change that touches none of these
rows (renaming a type that a column uses, a sequence a default names, a
function a trigger runs, or granting the connected role membership in
another) is seen when the table itself is compared: when it changes, when
it is asked for by id, or by ``reflect(force=True)``; renaming a table in
*another* schema that a foreign key refers to is seen at the next change of
the schema.

The module stays above the layout's ~500 lines on purpose: it is one
backend's catalog queries (the describing query, the fingerprint, the
probes, the schema-level objects), which change together when a catalog
field is added; split, a field would be read in one file and probed in
another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from .objects import ObjectSnapshot
from .snapshot import (
    FOREIGN_TABLE,
    MATERIALIZED_VIEW,
    PARTITIONED_TABLE,
    PRIVILEGES,
    TABLE,
    VIEW,
    LiveTable,
    SchemaSnapshot,
)

_KINDS = {
    "r": TABLE,
    "p": PARTITIONED_TABLE,
    "v": VIEW,
    "m": MATERIALIZED_VIEW,
    "f": FOREIGN_TABLE,
}
_RELKINDS = "('r', 'p', 'v', 'm', 'f')"
# The sync log's capture triggers (flask_reflectsync.tracking.triggers) are
# the extension's own: a table that has them is not altered.
_OWN_TRIGGERS = r"reflectsync\_capture\_%"
_ACTIONS = {
    "a": None,  # NO ACTION, the default
    "r": "RESTRICT",
    "c": "CASCADE",
    "n": "SET NULL",
    "d": "SET DEFAULT",
}
# pg_advisory_xact_lock key: "reflectsync catalog" folded to a bigint.
_LOCK_KEY = 0x5245464C_43415401

_USER_SCHEMAS = "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"

_SCHEMAS_FINGERPRINT = sa.text(
    "SELECT (SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0)"
    "        FROM pg_namespace)"
    " || '/' || (SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0)"
    "        FROM pg_description"
    "        WHERE classoid = 'pg_namespace'::regclass)"
)

_SCHEMAS = sa.text(
    "SELECT n.oid::bigint AS oid, n.nspname AS name, d.description AS comment"
    " FROM pg_namespace n"
    " LEFT JOIN pg_description d ON d.objoid = n.oid"
    "  AND d.classoid = 'pg_namespace'::regclass AND d.objsubid = 0"
    f" WHERE {_USER_SCHEMAS}"
    " ORDER BY n.nspname"
)


def _versions(rows: str) -> str:
    return f"(SELECT count(*) || ':' || coalesce(sum(x.xmin::text::bigint), 0) {rows})"


_SCHEMA_RELATIONS = (
    f"SELECT oid FROM pg_class WHERE relnamespace = :schema AND relkind IN {_RELKINDS}"
)

_TABLES_FINGERPRINT = sa.text(
    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE oid = :schema) AS present, "
    + " || '/' || ".join(
        [
            _versions(
                "FROM pg_class x WHERE x.relnamespace = :schema"
                f" AND x.relkind IN {_RELKINDS}"
            ),
            _versions(
                "FROM pg_attribute x JOIN pg_class c ON c.oid = x.attrelid"
                f" WHERE c.relnamespace = :schema AND c.relkind IN {_RELKINDS}"
                " AND x.attnum > 0"
            ),
            _versions(f"FROM pg_attrdef x WHERE x.adrelid IN ({_SCHEMA_RELATIONS})"),
            _versions(
                "FROM pg_constraint x WHERE x.connamespace = :schema"
                " AND x.contype IN ('p', 'u', 'f', 'c')"
            ),
            _versions(
                "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
                f" WHERE x.indrelid IN ({_SCHEMA_RELATIONS})"
            )
            + " || '+' || "
            + _versions(
                "FROM pg_class x WHERE x.relnamespace = :schema"
                " AND x.relkind IN ('i', 'I')"
            ),
            _versions(f"FROM pg_rewrite x WHERE x.ev_class IN ({_SCHEMA_RELATIONS})"),
            _versions(
                "FROM pg_trigger x WHERE NOT x.tgisinternal"
                f" AND x.tgname NOT LIKE '{_OWN_TRIGGERS}'"
                f" AND x.tgrelid IN ({_SCHEMA_RELATIONS})"
            ),
            _versions(
                "FROM pg_description x WHERE x.classoid = 'pg_class'::regclass"
                f" AND x.objoid IN ({_SCHEMA_RELATIONS})"
            ),
        ]
    )
    + " AS fingerprint"
)

def _key_names(keys: str) -> str:
    """A JSON array of the names of the table's columns numbered ``keys``, in
    key order, looked up in ``att.names`` (indexed by ``attnum``)."""
    return (
        "(SELECT coalesce(json_agg(att.names[k.attnum] ORDER BY k.i), '[]')"
        f" FROM unnest({keys}) WITH ORDINALITY AS k(attnum, i))"
    )


def _referred_names(keys: str, relation: str) -> str:
    """A JSON array of the names of ``relation``'s columns numbered ``keys``,
    in key order."""
    return (
        "(SELECT coalesce(json_agg(ka.attname"
        f" ORDER BY array_position({keys}, ka.attnum)), '[]')"
        f" FROM pg_attribute ka WHERE ka.attrelid = {relation}"
        f" AND ka.attnum = ANY ({keys}))"
    )


def _action(column: str) -> str:
    cases = " ".join(
        f"WHEN '{code}' THEN '{action}'" for code, action in _ACTIONS.items() if action
    )
    return f"CASE {column} {cases} END"


# A table's *version*: the count and the sum of the row versions (xmin) of
# the catalog rows that describe it: its pg_class row and comment, its
# pg_attribute, pg_attrdef and column comment rows, and its constraints. DDL
# that changes any of them writes a new row version, so an equal version
# means an equal description, except for the names its foreign keys refer to
# (the refresh re-reads a table whose referred table changed); a different
# one (a GRANT, say) only means "describe it again". Both queries below build
# it from the same fragments, so they agree by construction.
_ATTRIBUTES_VERSION = (
    "count(*) + count(ad.xmin) + count(cd.xmin) AS n,"
    " coalesce(sum(a.xmin::text::bigint), 0)"
    " + coalesce(sum(ad.xmin::text::bigint), 0)"
    " + coalesce(sum(cd.xmin::text::bigint), 0) AS s"
)
_ATTRIBUTES_FROM = """
     FROM pg_attribute a
     LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
     LEFT JOIN pg_description cd ON cd.objoid = a.attrelid
       AND cd.classoid = 'pg_class'::regclass AND cd.objsubid = a.attnum
    WHERE a.attrelid = c.oid AND a.attnum > 0"""
_RELATIONS = f"""
FROM pg_class c
LEFT JOIN pg_description td ON td.objoid = c.oid
  AND td.classoid = 'pg_class'::regclass AND td.objsubid = 0
{{attributes}}
CROSS JOIN LATERAL (
  SELECT count(*) AS n, coalesce(sum(x.xmin::text::bigint), 0) AS s FROM (
    SELECT con.xmin FROM pg_constraint con
     WHERE con.conrelid = c.oid AND con.contype IN ('p', 'u', 'f', 'c')
    UNION ALL SELECT unnest(ARRAY[i.xmin, ic.xmin]) FROM pg_index i
      JOIN pg_class ic ON ic.oid = i.indexrelid
     WHERE c.relhasindex AND i.indrelid = c.oid
    UNION ALL SELECT r.xmin FROM pg_rewrite r
     WHERE c.relkind IN ('v', 'm') AND r.ev_class = c.oid
    UNION ALL SELECT tg.xmin FROM pg_trigger tg
     WHERE c.relhastriggers AND tg.tgrelid = c.oid AND NOT tg.tgisinternal
       AND tg.tgname NOT LIKE '{_OWN_TRIGGERS}'
  ) AS x) AS own
WHERE c.relnamespace = :schema AND c.relkind IN {_RELKINDS}
"""
_VERSION = (
    "(1 + (td.xmin IS NOT NULL)::int + att.n + own.n)::text || ':' ||"
    " (c.xmin::text::bigint + coalesce(td.xmin::text::bigint, 0)"
    " + att.s + own.s)::text AS version"
)

# The flags relhasindex, relhastriggers (true while the table has, or
# recently had, indexes or triggers) and relchecks (how many CHECK
# constraints) let the queries skip the lookups a table without any needs.

# Trigger timing and events from pg_trigger.tgtype's bits.
_TIMING = (
    "CASE WHEN tg.tgtype & 64 <> 0 THEN 'INSTEAD OF'"
    " WHEN tg.tgtype & 2 <> 0 THEN 'BEFORE' ELSE 'AFTER' END"
)
_EVENTS = (
    "(SELECT coalesce(json_agg(e.name ORDER BY e.i), '[]') FROM (VALUES"
    " (1, 'INSERT', 4), (2, 'UPDATE', 16), (3, 'DELETE', 8), (4, 'TRUNCATE', 32))"
    " AS e(i, name, bit) WHERE tg.tgtype & e.bit <> 0)"
)
# The privileges as one array, without the ones the role lacks.
_PRIVILEGES = "array_remove(ARRAY[{}], NULL)".format(", ".join(
    f"CASE WHEN has_table_privilege(c.oid, '{name}') THEN '{name}' END"
    for name in PRIVILEGES
))

# One row per relation; its columns and constraints arrive as the JSON texts
# of a LiveTable, built here so that nothing is decoded unless it is compared.
# ``att.names`` holds every column name by attnum (attnums run from 1 without
# gaps; dropped columns keep theirs), so constraint keys are named without
# looking pg_attribute up again.
_TABLES_SELECT = f"""
SELECT c.oid::text AS oid, c.relname AS name, c.relkind AS relkind,
  td.description AS comment, {_VERSION},
  att.columns,
  coalesce((SELECT {_key_names("con.conkey")}::text
     FROM pg_constraint con
    WHERE con.conrelid = c.oid AND con.contype = 'p'), '[]') AS primary_key,
  (SELECT coalesce(json_agg(json_build_object(
            'name', con.conname,
            'columns', {_key_names("con.conkey")},
            'referred_schema',
              CASE WHEN fc.relnamespace = c.relnamespace THEN NULL ELSE fn.nspname END,
            'referred_table', fc.relname,
            'referred_columns', {_referred_names("con.confkey", "con.confrelid")},
            'on_update', {_action("con.confupdtype")},
            'on_delete', {_action("con.confdeltype")})
          ORDER BY con.conname), '[]')::text
     FROM pg_constraint con
     JOIN pg_class fc ON fc.oid = con.confrelid
     JOIN pg_namespace fn ON fn.oid = fc.relnamespace
    WHERE con.conrelid = c.oid AND con.contype = 'f') AS foreign_keys,
  (SELECT coalesce(json_agg(json_build_object(
            'name', con.conname,
            'columns', {_key_names("con.conkey")})
          ORDER BY con.conname), '[]')::text
     FROM pg_constraint con
    WHERE con.conrelid = c.oid AND con.contype = 'u') AS unique_constraints,
  CASE WHEN c.relchecks = 0 THEN '[]' ELSE
  (SELECT coalesce(json_agg(json_build_object(
            'name', con.conname,
            'expression', pg_get_expr(con.conbin, con.conrelid, true))
          ORDER BY con.conname), '[]')::text
     FROM pg_constraint con
    WHERE con.conrelid = c.oid AND con.contype = 'c') END AS check_constraints,
  CASE WHEN NOT c.relhasindex THEN '[]' ELSE
  (SELECT coalesce(json_agg(json_build_object(
            'name', ic.relname,
            -- a column by its name, an expression as pg_get_indexdef spells it
            'columns', (SELECT json_agg(CASE WHEN i.indkey[k - 1] > 0
                                        THEN att.names[i.indkey[k - 1]]
                                        ELSE pg_get_indexdef(i.indexrelid, k, true)
                                        END ORDER BY k)
                          FROM generate_series(1, i.indnkeyatts) AS k),
            'unique', i.indisunique,
            'predicate', pg_get_expr(i.indpred, i.indrelid, true))
          ORDER BY ic.relname), '[]')::text
     FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    WHERE i.indrelid = c.oid AND NOT i.indisprimary
      AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid
                      AND k.conindid = i.indexrelid AND k.contype = 'u')) END
    AS indexes,
  CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END
    AS definition,
  CASE WHEN NOT c.relhastriggers THEN '[]' ELSE
  (SELECT coalesce(json_agg(json_build_object(
            'name', tg.tgname,
            'timing', {_TIMING},
            'events', {_EVENTS},
            'definition', pg_get_triggerdef(tg.oid, true))
          ORDER BY tg.tgname), '[]')::text
     FROM pg_trigger tg
    WHERE tg.tgrelid = c.oid AND NOT tg.tgisinternal
      AND tg.tgname NOT LIKE '{_OWN_TRIGGERS}') END AS triggers,
  to_json({_PRIVILEGES})::text AS privileges
""" + _RELATIONS.format(attributes=f"""
CROSS JOIN LATERAL (
  SELECT array_agg(a.attname::text ORDER BY a.attnum) AS names,
    coalesce(json_agg(json_build_array(
            a.attnum::text, a.attname, format_type(a.atttypid, a.atttypmod),
            NOT a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid), cd.description)
          ORDER BY a.attnum) FILTER (WHERE NOT a.attisdropped), '[]')::text
      AS columns,
    {_ATTRIBUTES_VERSION}
    {_ATTRIBUTES_FROM}) AS att""")

_VERSIONS = sa.text(
    f"SELECT c.oid::text AS oid, c.relname AS name, {_VERSION}"
    + _RELATIONS.format(
        attributes=f"CROSS JOIN LATERAL (SELECT {_ATTRIBUTES_VERSION}"
        f" {_ATTRIBUTES_FROM}) AS att"
    )
)

#: The statement that reads a whole schema (also the benchmark's baseline).
TABLES_QUERY = sa.text(_TABLES_SELECT + " ORDER BY c.relname")
_SOME_TABLES = sa.text(
    _TABLES_SELECT + " AND c.oid = ANY (CAST(:oids AS oid[])) ORDER BY c.relname"
)
_TABLE = sa.text(_TABLES_SELECT + " AND c.oid = :oid")
# The tables whose description names something of the changed tables (or of
# another schema): a foreign key's referred table and columns, and a view's
# query, which names the relations and columns it reads.
_DEPENDENTS = sa.text(
    "SELECT DISTINCT con.conrelid::text FROM pg_constraint con"
    " JOIN pg_class fc ON fc.oid = con.confrelid"
    " WHERE con.connamespace = :schema AND con.contype = 'f'"
    " AND (con.confrelid = ANY (CAST(:oids AS oid[]))"
    " OR fc.relnamespace <> :schema)"
    " UNION SELECT DISTINCT r.ev_class::text FROM pg_rewrite r"
    " JOIN pg_class v ON v.oid = r.ev_class"
    " JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid"
    " JOIN pg_class used ON used.oid = d.refobjid"
    " WHERE v.relnamespace = :schema AND d.refclassid = 'pg_class'::regclass"
    " AND d.refobjid <> r.ev_class"
    " AND (d.refobjid = ANY (CAST(:oids AS oid[]))"
    " OR used.relnamespace <> :schema)"
)
_SCHEMA_PRESENT = sa.text("SELECT 1 FROM pg_namespace WHERE oid = :schema")

# Enum and domain types and sequences (see .objects). Extension members
# (pg_depend 'e') are left out, as are a relation's own row type and array
# types, which are no typtype 'e' or 'd' anyway.
_SCHEMA_TYPES = (
    "SELECT oid FROM pg_type WHERE typnamespace = :schema AND typtype IN ('e', 'd')"
)
_SCHEMA_SEQUENCES = (
    "SELECT oid FROM pg_class WHERE relnamespace = :schema AND relkind = 'S'"
)
_OBJECTS_FINGERPRINT = sa.text(
    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE oid = :schema) AS present, "
    + " || '/' || ".join(
        [
            _versions(f"FROM pg_type x WHERE x.oid IN ({_SCHEMA_TYPES})"),
            _versions(f"FROM pg_enum x WHERE x.enumtypid IN ({_SCHEMA_TYPES})"),
            _versions(f"FROM pg_constraint x WHERE x.contypid IN ({_SCHEMA_TYPES})"),
            _versions(f"FROM pg_class x WHERE x.oid IN ({_SCHEMA_SEQUENCES})"),
            _versions(f"FROM pg_sequence x WHERE x.seqrelid IN ({_SCHEMA_SEQUENCES})"),
            _versions(
                "FROM pg_depend x WHERE x.classid = 'pg_class'::regclass"
                f" AND x.objid IN ({_SCHEMA_SEQUENCES}) AND x.deptype IN ('a', 'i')"
            ),
        ]
    )
    + " AS fingerprint"
)
_OBJECTS = sa.text("""
SELECT t.oid::text AS oid, t.typname AS name, 'enum' AS kind,
  json_build_object('labels', coalesce((
    SELECT json_agg(e.enumlabel ORDER BY e.enumsortorder)
      FROM pg_enum e WHERE e.enumtypid = t.oid), '[]'))::text AS details
  FROM pg_type t WHERE t.typnamespace = :schema AND t.typtype = 'e'
UNION ALL
SELECT t.oid::text, t.typname, 'domain',
  json_build_object(
    'type', format_type(t.typbasetype, t.typtypmod),
    'nullable', NOT t.typnotnull,
    'default', t.typdefault,
    'check_constraints', coalesce((
      SELECT json_agg(json_build_object(
               'name', k.conname, 'expression', pg_get_expr(k.conbin, 0, true))
             ORDER BY k.conname)
        FROM pg_constraint k WHERE k.contypid = t.oid AND k.contype = 'c'), '[]')
  )::text
  FROM pg_type t WHERE t.typnamespace = :schema AND t.typtype = 'd'
UNION ALL
SELECT c.oid::text, c.relname, 'sequence',
  json_build_object(
    'type', format_type(q.seqtypid, NULL),
    'start', q.seqstart::text,
    'increment', q.seqincrement::text,
    'minimum', q.seqmin::text,
    'maximum', q.seqmax::text,
    'cycle', q.seqcycle,
    'owner', pg_get_userbyid(c.relowner),
    'owned_by', (
      SELECT json_build_object('table', tc.relname, 'column', a.attname)
        FROM pg_depend d
        JOIN pg_class tc ON tc.oid = d.refobjid
        JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
       WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
         AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
       LIMIT 1)
  )::text
  FROM pg_class c JOIN pg_sequence q ON q.seqrelid = c.oid
 WHERE c.relnamespace = :schema AND c.relkind = 'S'
""")


class PostgresReader:
    """:class:`~.snapshot.CatalogReader` for PostgreSQL."""

    dialect = "postgresql"

    #: Identities are oids and attnums, which renames keep.
    identity_by_name = False
    rename_hints_are_ids = False

    def schemas_fingerprint(self, connection: sa.Connection) -> str:
        return str(connection.execute(_SCHEMAS_FINGERPRINT).scalar_one())

    def read_schemas(self, connection: sa.Connection) -> list[SchemaSnapshot]:
        return [
            SchemaSnapshot(oid=str(row.oid), name=row.name, comment=row.comment)
            for row in connection.execute(_SCHEMAS)
        ]

    def tables_fingerprint(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> str | None:
        row = connection.execute(
            _TABLES_FINGERPRINT, {"schema": int(schema.oid)}
        ).one()
        return str(row.fingerprint) if row.present else None

    #: Versions cost about a third of describing a schema.
    versioned = True

    def read_versions(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> dict[str, tuple[str, str]] | None:
        rows = connection.execute(_VERSIONS, {"schema": int(schema.oid)}).all()
        if not rows and not self._schema_present(connection, schema):
            return None
        return {row.oid: (row.name, row.version) for row in rows}

    def read_dependents(
        self, connection: sa.Connection, schema: SchemaSnapshot, oids: Sequence[str]
    ) -> set[str]:
        found = connection.execute(
            _DEPENDENTS,
            {"schema": int(schema.oid), "oids": [int(oid) for oid in oids]},
        )
        return set(found.scalars())

    def read_tables(
        self,
        connection: sa.Connection,
        schema: SchemaSnapshot,
        oids: Sequence[str] | None = None,
    ) -> list[LiveTable] | None:
        if oids is None:
            found = connection.execute(TABLES_QUERY, {"schema": int(schema.oid)})
        else:
            found = connection.execute(
                _SOME_TABLES,
                {"schema": int(schema.oid), "oids": [int(oid) for oid in oids]},
            )
        rows = found.all()
        if not rows and not self._schema_present(connection, schema):
            return None
        return [_table(row) for row in rows]

    def read_table(
        self, connection: sa.Connection, schema: SchemaSnapshot, oid: str
    ) -> LiveTable | None:
        row = connection.execute(
            _TABLE, {"schema": int(schema.oid), "oid": int(oid)}
        ).one_or_none()
        return None if row is None else _table(row)

    def objects_fingerprint(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> str | None:
        """See :mod:`.objects`."""
        row = connection.execute(
            _OBJECTS_FINGERPRINT, {"schema": int(schema.oid)}
        ).one()
        return str(row.fingerprint) if row.present else None

    def read_objects(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> list[ObjectSnapshot] | None:
        """See :mod:`.objects`."""
        rows = connection.execute(_OBJECTS, {"schema": int(schema.oid)}).all()
        if not rows and not self._schema_present(connection, schema):
            return None
        return sorted(
            (ObjectSnapshot(oid=row.oid, name=row.name, kind=row.kind,
                            details=row.details) for row in rows),
            key=lambda item: (item.kind, item.name),
        )

    def lock(self, connection: sa.Connection) -> None:
        # Released by the COMMIT that ends the refresh; READ COMMITTED makes
        # every later statement see what the previous holder committed.
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY}
        )

    def unlock(self, connection: sa.Connection) -> None:
        """Nothing to do: the transaction-level lock ended with the commit."""

    def _schema_present(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> bool:
        found = connection.execute(_SCHEMA_PRESENT, {"schema": int(schema.oid)})
        return found.first() is not None


def _table(row: Any) -> LiveTable:
    return LiveTable(
        oid=row.oid,
        name=row.name,
        kind=_KINDS[row.relkind],
        comment=row.comment,
        columns=row.columns,
        primary_key=row.primary_key,
        foreign_keys=row.foreign_keys,
        unique_constraints=row.unique_constraints,
        version=row.version,
        check_constraints=row.check_constraints,
        indexes=row.indexes,
        definition=row.definition,
        triggers=row.triggers,
        privileges=row.privileges,
    )
