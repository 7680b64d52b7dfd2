"""The catalog routes: the app's own UI browsing the reflected database.

``GET /schemas``, ``GET /schemas/<id>/tables``, ``GET /tables/<id>`` and
``GET /schemas/<id>/objects`` under the blueprint's prefix. They are for the
app's users, not for offline nodes: no node signatures, but the check
registered with
:meth:`ReflectSync.catalog_access` decides who may call them. Without one they
are closed (403) unless ``REFLECTSYNC_OPEN_CATALOG`` opens them to anyone, and
then a :class:`~flask_reflectsync.errors.CatalogAccessWarning` says so the
first time one of them is served by an app.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from weakref import WeakSet

from flask import Blueprint, Flask, Response, current_app, request

from ..errors import (
    CatalogAccessWarning,
    ForbiddenError,
    NotFoundError,
    ValidationError,
)
from ..reflection import Catalog, define_catalog_tables
from .api import ok_response

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

#: Apps already warned that their catalog routes are open.
_warned: WeakSet[Flask] = WeakSet()

AccessCheck = Callable[[], bool]

#: Tables the catalog never shows: the extension's own.
OWN_TABLES = ("reflectsync_*",)


def setup_catalog(db: SQLAlchemy, blueprint: Blueprint) -> None:
    """Define the catalog tables on ``db.metadata`` and add the catalog routes
    to ``blueprint`` (before it is registered).

    :param db: the app's Flask-SQLAlchemy object.
    :param blueprint: the extension's blueprint.
    """
    define_catalog_tables(db.metadata)
    blueprint.add_url_rule("/schemas", view_func=list_schemas, methods=["GET"])
    blueprint.add_url_rule(
        "/schemas/<int:schema_id>/tables", view_func=list_tables, methods=["GET"]
    )
    blueprint.add_url_rule(
        "/tables/<int:table_id>", view_func=get_table, methods=["GET"]
    )
    blueprint.add_url_rule(
        "/schemas/<int:schema_id>/objects", view_func=list_objects, methods=["GET"]
    )



def catalog_for(app: Flask) -> Catalog:
    """The reflection catalog of ``app``'s database; needs an app context.

    :param app: an app the extension is registered on.
    """
    state = app.extensions["reflectsync"]
    return Catalog(
        state.db.engine,
        define_catalog_tables(state.db.metadata),
        sender=app,
        exclude=OWN_TABLES,
    )


def _authorised() -> Catalog:
    """The current app's catalog, once the access check has let the request in.

    :raises ForbiddenError: if the check refuses.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    state = app.extensions["reflectsync"]
    check: AccessCheck | None = state.extension.catalog_access_check
    if check is None:
        if not state.config["REFLECTSYNC_OPEN_CATALOG"]:
            raise ForbiddenError(
                "The catalog routes are closed: register an access check with "
                "@sync.catalog_access, or set REFLECTSYNC_OPEN_CATALOG = True "
                "to open them to anyone.",
                code="catalog.closed",
            )
        if app not in _warned:
            _warned.add(app)
            warnings.warn(
                "The flask-reflectsync catalog routes are open to anyone "
                "(REFLECTSYNC_OPEN_CATALOG): register an access check with "
                "@sync.catalog_access.",
                CatalogAccessWarning,
                stacklevel=2,
            )
    elif not check():
        raise ForbiddenError("You are not allowed to browse the database catalog.")
    return catalog_for(app)


#: Catalog ids are 32-bit integer keys; a larger id names nothing (and
#: PostgreSQL refuses to compare an integer column with it).
_ID_MAX = 2**31 - 1


def _known_id(value: int, what: str) -> int:
    if value > _ID_MAX:
        raise NotFoundError(f"There is no {what} with id {value}.")
    return value


_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def _flag(name: str) -> bool:
    """A yes/no query parameter; anything else is refused (400)."""
    value = request.args.get(name, "")
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValidationError(f"The query parameter {name} must be 0 or 1, not {value!r}.")


def list_schemas() -> Response:
    """``GET /schemas``: the schemas, refreshed if anything changed.

    Query: ``include_deleted=1`` also lists dropped schemas.
    """
    schemas = _authorised().list_schemas(include_deleted=_flag("include_deleted"))
    return ok_response(schemas=[schema.to_dict() for schema in schemas])


def list_tables(schema_id: int) -> Response:
    """``GET /schemas/<id>/tables``: the schema's tables, views and
    materialized views (without columns), refreshed if anything changed.

    Query: ``include_deleted=1`` also lists dropped tables.
    """
    catalog = _authorised()
    tables = catalog.list_tables(
        _known_id(schema_id, "schema"), include_deleted=_flag("include_deleted")
    )
    return ok_response(tables=[table.to_dict() for table in tables])


def get_table(table_id: int) -> Response:
    """``GET /tables/<id>``: one table with its columns, from the catalog.

    A 410 answer means the table has been dropped; 404 that it never existed.
    """
    table: Any = _authorised().get_table(_known_id(table_id, "table"))
    return ok_response(table=table.to_dict())


def list_objects(schema_id: int) -> Response:
    """``GET /schemas/<id>/objects``: the schema's enum and domain types and
    sequences, refreshed if anything changed.

    Query: ``include_deleted=1`` also lists dropped objects.
    """
    catalog = _authorised()
    found = catalog.list_objects(
        _known_id(schema_id, "schema"), include_deleted=_flag("include_deleted")
    )
    return ok_response(objects=[item.to_dict() for item in found])

