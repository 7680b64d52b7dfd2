"""Signals sent by flask-reflectsync.

Every signal lives in one private :class:`blinker.Namespace`. The sender is
always the Flask application (the real object, never the ``current_app``
proxy) and every payload is passed as keyword arguments, so a receiver looks
like this::

    from flask_reflectsync import signals

    @signals.table_created.connect_via(app)
    def on_table_created(sender, table, **extra):
        print("new table", table.name)

Receivers are held weakly by default: a lambda or a function defined inside
another function disappears as soon as nothing else refers to it. Connect those
with ``weak=False``.

Receivers should accept ``**extra``: later versions may add keyword arguments.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

# -- reflection ---------------------------------------------------------------

#: A schema appeared in the database.
#: Sender: the app. Keyword arguments: ``schema`` (the catalog schema object).
schema_created = _signals.signal("schema-created")

#: A schema disappeared from the database.
#: Sender: the app. Keyword arguments: ``schema`` (the catalog schema object,
#: now marked ``deleted``).
schema_dropped = _signals.signal("schema-dropped")

#: A schema kept its identity but changed its name.
#: Sender: the app. Keyword arguments: ``schema``, ``old_name``, ``new_name``.
schema_renamed = _signals.signal("schema-renamed")

#: A table, view or materialized view appeared.
#: Sender: the app. Keyword arguments: ``table`` (the catalog table object).
table_created = _signals.signal("table-created")

#: A table, view or materialized view disappeared.
#: Sender: the app. Keyword arguments: ``table`` (the catalog table object, now
#: marked ``deleted``).
table_dropped = _signals.signal("table-dropped")

#: A table kept its identity but changed its name.
#: Sender: the app. Keyword arguments: ``table``, ``old_name``, ``new_name``.
table_renamed = _signals.signal("table-renamed")

#: The columns or constraints of a table changed.
#: Sender: the app. Keyword arguments: ``table`` (the catalog table, with its
#: columns as they now are), ``changes`` (a tuple of
#: :class:`~flask_reflectsync.reflection.ColumnChange`: added, dropped,
#: renamed, altered) and ``attributes`` (the names of other table attributes
#: that changed: ``kind``, ``comment``, ``primary_key``, ``foreign_keys``,
#: ``unique_constraints``, ``check_constraints``, ``indexes``, ``definition``,
#: ``triggers``, ``privileges``).
table_altered = _signals.signal("table-altered")

#: An enum or domain type or a sequence appeared in a schema.
#: Sender: the app. Keyword arguments: ``object`` (the catalog object).
object_created = _signals.signal("object-created")

#: An enum or domain type or a sequence disappeared.
#: Sender: the app. Keyword arguments: ``object`` (marked ``deleted``).
object_dropped = _signals.signal("object-dropped")

#: A schema-level object kept its identity but changed its name.
#: Sender: the app. Keyword arguments: ``object``, ``old_name``, ``new_name``.
object_renamed = _signals.signal("object-renamed")

#: What a schema-level object is changed (an enum's labels, a domain's
#: checks, a sequence's increment...). Sender: the app. Keyword arguments:
#: ``object`` and ``fields`` (the keys of ``object.details`` that changed).
object_altered = _signals.signal("object-altered")

# -- synchronisation ----------------------------------------------------------

#: A node registered with this server (``POST /register`` succeeded).
#: Sender: the app. Keyword arguments: ``node``, a dict with the new node's
#: ``id`` and ``name`` (never its secret).
node_registered = _signals.signal("node-registered")

#: A push was applied and created a version. Not sent again when a retry of
#: the same push id is answered from the stored version.
#: Sender: the app. Keyword arguments: ``node`` (the node id), ``push_id``
#: (the node-chosen id), ``version`` (the version number it created),
#: ``operations`` (how many operations were applied).
push_accepted = _signals.signal("push-accepted")

#: A push from an authenticated node was refused; nothing it carried was
#: written (validation errors, conflicts, constraint violations). Requests
#: that fail authentication send nothing.
#: Sender: the app. Keyword arguments: ``node`` (the node id), ``push_id``
#: (the node-chosen id, or ``None`` if the message had none), ``reason`` (the
#: error message sent back), ``status`` (the HTTP status).
push_rejected = _signals.signal("push-rejected")

#: A page of a pull was served to a node.
#: Sender: the app. Keyword arguments: ``node`` (the node id), ``since`` (the
#: version the node had), ``until`` (the version the node has after applying
#: the page), ``operations`` (how many rows the page changes, written or
#: deleted), ``more`` (whether another page follows).
pull_served = _signals.signal("pull-served")

#: A conflict between a node's changes and the server's was resolved.
#: Sender: the app on the server, the :class:`~flask_reflectsync.client.SyncClient`
#: on a node. Keyword arguments: ``conflict`` (a record naming the kind, the
#: model, the primary key and the resolution).
conflict_resolved = _signals.signal("conflict-resolved")

#: A node's view of its synchronisation changed (connected, last synced,
#: pending or set-aside counts, last error, watching; see :doc:`/fleet`).
#: Sent on the node after each push, pull, repair or synchronize whose
#: outcome changes it, and by ``watch()`` as it goes.
#: Sender: the :class:`~flask_reflectsync.client.SyncClient`. Keyword
#: arguments: ``status`` (the new
#: :class:`~flask_reflectsync.client.SyncStatus`). Sent from the thread
#: doing the work: a receiver updating a UI hands it to the UI's thread.
sync_status_changed = _signals.signal("sync-status-changed")

__all__ = [
    "schema_created",
    "schema_dropped",
    "schema_renamed",
    "table_created",
    "table_dropped",
    "table_renamed",
    "table_altered",
    "object_created",
    "object_dropped",
    "object_renamed",
    "object_altered",
    "node_registered",
    "push_accepted",
    "push_rejected",
    "pull_served",
    "conflict_resolved",
    "sync_status_changed",
]
