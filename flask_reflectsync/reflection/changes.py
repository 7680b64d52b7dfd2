"""The change records :meth:`ReflectSync.reflect` returns, one per signal.

Each record carries the catalog object as it is *after* the change and
knows the signal that announces it; :meth:`Change.send` sends that signal
with the record's fields as keyword arguments, and :func:`announce` sends a
whole refresh's records so that a failing receiver cannot silence the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, fields
from inspect import iscoroutinefunction
from typing import Any, ClassVar

from blinker import NamedSignal

from .. import signals
from .diff import ColumnChange
from .models import CatalogObject, CatalogSchema, CatalogTable, fields_dict


@dataclass(frozen=True)
class Change:
    """Base class of change records."""

    #: The signal that announces this change.
    signal: ClassVar[NamedSignal]

    def payload(self) -> dict[str, Any]:
        """The keyword arguments the signal is sent with: the record's
        fields (``fields()`` leaves out the :attr:`signal` class variable,
        which ``__dataclass_fields__`` lists)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def send(self, sender: Any) -> None:
        """Send :attr:`signal` with :meth:`payload`; the first receiver
        that raises stops the others (see :func:`announce`).

        :param sender: the Flask app (the real object, not the proxy).
        """
        self.signal.send(sender, **self.payload())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: the signal name and the payload."""
        return {"event": self.signal.name.replace("-", "_"), **fields_dict(self)}


log = logging.getLogger("flask_reflectsync")


def announce(changes: Iterable[Change], sender: Any) -> None:
    """Send every change's signal to every receiver, even when some raise.

    The changes are committed already, so a receiver's exception must not
    keep the others, or the later signals, from hearing of them: each one
    is logged, the sending goes on, and the first is raised again once
    everything was sent.

    :param changes: the records of one refresh, in order.
    :param sender: the Flask app (the real object, not the proxy).
    :raises Exception: the first exception a receiver raised.
    """
    first: Exception | None = None
    for change in changes:
        signal = change.signal
        if getattr(signal, "is_muted", False):  # Signal.muted(), blinker >= 1.7
            continue
        payload = change.payload()
        for receiver in signal.receivers_for(sender):
            try:
                if iscoroutinefunction(receiver):
                    raise RuntimeError("Cannot send to a coroutine function.")
                receiver(sender, **payload)
            except Exception as error:
                log.exception(
                    "A receiver of %s raised; the other receivers and signals "
                    "are still sent.",
                    signal.name,
                )
                first = first or error
    if first is not None:
        raise first


@dataclass(frozen=True)
class SchemaCreated(Change):
    """A schema appeared. Sent as :data:`~flask_reflectsync.signals.schema_created`."""

    signal = signals.schema_created
    schema: CatalogSchema


@dataclass(frozen=True)
class SchemaDropped(Change):
    """A schema disappeared; ``schema.deleted`` is true.
    Sent as :data:`~flask_reflectsync.signals.schema_dropped`."""

    signal = signals.schema_dropped
    schema: CatalogSchema


@dataclass(frozen=True)
class SchemaRenamed(Change):
    """A schema kept its identity and changed its name.
    Sent as :data:`~flask_reflectsync.signals.schema_renamed`."""

    signal = signals.schema_renamed
    schema: CatalogSchema
    old_name: str
    new_name: str


@dataclass(frozen=True)
class TableCreated(Change):
    """A table, view or materialized view appeared.
    Sent as :data:`~flask_reflectsync.signals.table_created`."""

    signal = signals.table_created
    table: CatalogTable


@dataclass(frozen=True)
class TableDropped(Change):
    """A table disappeared; ``table.deleted`` is true.
    Sent as :data:`~flask_reflectsync.signals.table_dropped`."""

    signal = signals.table_dropped
    table: CatalogTable


@dataclass(frozen=True)
class TableRenamed(Change):
    """A table kept its identity and changed its name.
    Sent as :data:`~flask_reflectsync.signals.table_renamed`."""

    signal = signals.table_renamed
    table: CatalogTable
    old_name: str
    new_name: str


@dataclass(frozen=True)
class TableAltered(Change):
    """A table's columns or other attributes changed.
    Sent as :data:`~flask_reflectsync.signals.table_altered`.

    ``changes`` lists the column changes; ``attributes`` names the other
    attributes that changed (``kind``, ``comment``, ``primary_key``,
    ``foreign_keys``, ``unique_constraints``).
    """

    signal = signals.table_altered
    table: CatalogTable
    changes: tuple[ColumnChange, ...]
    attributes: tuple[str, ...]


@dataclass(frozen=True)
class ObjectCreated(Change):
    """An enum or domain type or a sequence appeared.
    Sent as :data:`~flask_reflectsync.signals.object_created`."""

    signal = signals.object_created
    object: CatalogObject


@dataclass(frozen=True)
class ObjectDropped(Change):
    """A schema-level object disappeared; ``object.deleted`` is true.
    Sent as :data:`~flask_reflectsync.signals.object_dropped`."""

    signal = signals.object_dropped
    object: CatalogObject


@dataclass(frozen=True)
class ObjectRenamed(Change):
    """A schema-level object kept its identity and changed its name.
    Sent as :data:`~flask_reflectsync.signals.object_renamed`."""

    signal = signals.object_renamed
    object: CatalogObject
    old_name: str
    new_name: str


@dataclass(frozen=True)
class ObjectAltered(Change):
    """What a schema-level object is changed; ``fields`` names the keys of
    ``object.details`` that did. Sent as
    :data:`~flask_reflectsync.signals.object_altered`."""

    signal = signals.object_altered
    object: CatalogObject
    fields: tuple[str, ...]
