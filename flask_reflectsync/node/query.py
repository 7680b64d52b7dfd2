"""Reading rows from the server (``GET /query``): the app's
:meth:`SyncClient.query` and the rows a merge or a set-aside change needs.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import set_committed_value

from ..errors import ConfigurationError
from ..rows import batches, row_key
from ..tracking import TrackedTable
from ..tracking.registry import plain_tracked, tracked_table_for
from ..wire.codec import stores_time_zones, synced_codecs

M = TypeVar("M")

if TYPE_CHECKING:
    from .client import SyncClient


def query(client: SyncClient, model: type[M], **filters: Any) -> list[M]:
    """What :meth:`SyncClient.query` does."""
    mapper = sa.inspect(model)
    info = model_table(model)
    params: dict[str, str] = {}
    for name, value in filters.items():
        attribute, _, operator = name.partition("__")
        prop = mapper.attrs.get(attribute)
        column = (
            prop.columns[0].name
            if prop is not None and hasattr(prop, "columns")
            else attribute
        )
        if operator == "in":
            text = ",".join(_text(v) for v in value)
        else:
            text = _text(value)
        params[f"{column}__{operator}" if operator else column] = text
    names = {c.name: mapper.get_property_by_column(c).key for c in info.table.columns}
    found: list[M] = []
    for row in server_rows(client, info, params):
        instance = mapper.class_manager.new_instance()
        for column_name, value in row.items():
            set_committed_value(instance, names[column_name], value)
        found.append(instance)
    return found


def fetch(
    client: SyncClient, table: str, keys: Sequence[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    info = client.schema.tables[table]
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    codecs_ = synced_codecs(info, aware_storage=True)
    pk = [codecs_[c.name] for c in info.pk_columns]
    if len(pk) == 1:
        for batch in batches(list(keys), 50):
            values = ",".join(_text(pk[0].to_json(k[0])) for k in batch)
            for row in server_rows(client, info, {f"{pk[0].name}__in": values}):
                found[row_key(info, row)] = row
        return found
    for key in keys:
        filters = {c.name: _text(c.to_json(v)) for c, v in zip(pk, key, strict=True)}
        for row in server_rows(client, info, filters):
            found[row_key(info, row)] = row
    return found


def server_rows(
    client: SyncClient, info: TrackedTable, filters: Mapping[str, str]
) -> Iterator[dict[str, Any]]:
    # Only the columns that travel: a server that sent one kept out of sync
    # (configured otherwise) does not get it written into the node.
    codecs_ = synced_codecs(
        info, aware_storage=stores_time_zones(client.engine.dialect)
    )
    offset: int | None = 0
    while offset is not None:
        params = {"model": info.name, **filters}
        if offset:
            params["offset"] = str(offset)
        answer = client._call("GET", "/query", params=params)
        for item in answer["rows"]:
            yield {
                name: codecs_[name].to_db(value, f"{info.name} row")
                for name, value in item.items()
                if name in codecs_
            }
        offset = answer["next_offset"]


def _text(value: Any) -> str:
    """A value as query-string text the server's codecs parse."""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    return str(value)


def model_table(model: type | sa.Table) -> TrackedTable:
    """The tracked table of ``model``: a tracked mapped class, or a plain
    table passed to ``track``."""
    if isinstance(model, sa.Table):
        info = plain_tracked(model)
    else:
        mapper: Mapper[Any] | None = sa.inspect(model, raiseerr=False)
        info = tracked_table_for(mapper) if mapper is not None else None
    if info is None:
        raise ConfigurationError(
            f"{getattr(model, '__name__', model)!r} is not a tracked mapped "
            "class or table."
        )
    return info
