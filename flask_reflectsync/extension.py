"""The :class:`ReflectSync` extension object."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

import sqlalchemy as sa
from flask import Flask, current_app, has_app_context

from .blueprints.api import install_prefix_guard, make_blueprint
from .blueprints.catalog import catalog_for, setup_catalog
from .blueprints.sync import add_sync_routes, current_schema
from .cli import cli
from .errors import ConfigurationError, NotFoundError, UntrackedLinkWarning
from .reflection import event_trigger
from .reflection.models import define_catalog_tables
from .server import fleet
from .server.column_names import define_column_names
from .server.fleet import NodeInfo
from .server.key_blocks import define_key_reservations
from .server.nodes import RegistrationCheck, bind_node, define_server_log
from .server.schema import TrackedSchema
from .server.scopes import Scopes, table_scope
from .server.settings import (
    SERVER_CONFIG_DEFAULTS,
    ServerSettings,
    define_protocol_tables,
)
from .server.stale import define_push_rulings
from .tracking import (
    LogTables,
    OperationLog,
    start_tracking,
    stop_tracking,
    track,
    triggers,
)
from .tracking.capture import ObjectTagger, TagReader
from .tracking.links import describe as describe_links
from .tracking.links import untracked_links
from .tracking.numbering import number_versions
from .tracking.registry import TrackedTable
from .tracking.tables import current_version

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import Session

    from .reflection import Change

T = TypeVar("T", bound=type)

EXTENSION_KEY = "reflectsync"

#: Every configuration key with its default. Documented in ``docs/config.rst``;
#: a test checks that each one is.
CONFIG_DEFAULTS: dict[str, Any] = {
    "REFLECTSYNC_URL_PREFIX": "/sync",
    "REFLECTSYNC_BLUEPRINT_NAME": "reflectsync",
    "REFLECTSYNC_TRACK_CHANGES": True,
    "REFLECTSYNC_CLI_GROUP": "reflectsync",
    # -- database-level capture (docs/tracking.rst, "Database-level capture") --
    "REFLECTSYNC_CAPTURE": "orm",
    # -- reflection catalog routes (docs/reflection.rst, "Access") --
    "REFLECTSYNC_OPEN_CATALOG": False,
    # -- sync server (docs/protocol.rst) --
    **SERVER_CONFIG_DEFAULTS,
}

# Keyword options of ReflectSync(...) and the config key each one defaults.
_OPTIONS = {key.removeprefix("REFLECTSYNC_").lower(): key for key in CONFIG_DEFAULTS}


@dataclass
class AppState:
    """What the extension keeps for one application, in
    ``app.extensions["reflectsync"]``.

    :param extension: the :class:`ReflectSync` that was registered.
    :param db: the app's Flask-SQLAlchemy object.
    :param tables: the extension's tables on ``db.metadata``.
    :param log: the operations log ``db.session`` writes to.
    :param config: the ``REFLECTSYNC_*`` values as they were at ``init_app``.
    :param settings: the sync server's settings, kept with the ``SECRET_KEY``
        they were built with (built again when it changes).
    :param schema: the tracked tables of ``db.metadata``, kept with what they
        were derived from (see :func:`~.tracking.registry.registry_state`).
    :param limits: the per-address limits of the sync routes, made on first
        use (see :mod:`.blueprints.limits`).
    :param nonce_sweeps: when each node's old nonces were last deleted
        (:class:`~.server.nodes.NonceSweeps`), made on first use.
    :param feed_hub: this process's watch of the log for the change feed
        (:class:`~.server.feed.FeedHub`), made on first use.
    """

    extension: ReflectSync
    db: SQLAlchemy
    tables: LogTables
    log: OperationLog
    config: dict[str, Any]
    settings: tuple[Any, ServerSettings] | None = None
    schema: tuple[tuple[int, int, int], TrackedSchema] | None = None
    limits: Any = None
    nonce_sweeps: Any = None
    feed_hub: Any = None
    #: The :class:`~.errors.UntrackedLinkWarning` sentences given already.
    warned_links: set[str] = field(default_factory=set)


def warn_untracked_links(state: AppState, schema: TrackedSchema) -> None:
    """An :class:`~.errors.UntrackedLinkWarning` naming every tracked model
    of ``schema`` with a relationship or foreign key to an untracked table
    (once per distinct set: at ``init_app``, and again when models tracked
    later add some)."""
    links = untracked_links(schema.tables.values())
    if not links:
        return
    message = describe_links(links)
    if message in state.warned_links:
        return
    state.warned_links.add(message)
    warnings.warn(message, UntrackedLinkWarning, stacklevel=3)


def _capture_mode(app: Flask, config: Mapping[str, Any]) -> str:
    """The checked ``REFLECTSYNC_CAPTURE`` of ``app``."""
    mode = config["REFLECTSYNC_CAPTURE"]
    if mode not in triggers.CAPTURE_MODES:
        raise ConfigurationError(
            f"REFLECTSYNC_CAPTURE = {mode!r}: use \"orm\" (the default) or "
            '"triggers".'
        )
    if mode == triggers.TRIGGERS:
        uri = app.config.get("SQLALCHEMY_DATABASE_URI")
        if uri:
            triggers.check_backend(sa.engine.make_url(uri).get_backend_name())
    return str(mode)


def _log_of_current_app(session: Session) -> OperationLog | None:
    """The log of the app ``session`` works for, or ``None`` when that app
    does not track changes.

    Apps made by one factory share its ``db`` and so the listeners on
    ``db.session``; the app context (which ``db.session`` needs anyway) says
    whose session it is, so ``REFLECTSYNC_TRACK_CHANGES`` stays per app.
    """
    if not has_app_context():
        return None
    state = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, AppState):
        return None
    return state.log if state.config["REFLECTSYNC_TRACK_CHANGES"] else None


class ReflectSync:
    """Offline-first sync and database reflection for a Flask app.

    ::

        db = SQLAlchemy()
        sync = ReflectSync()

        def create_app():
            app = Flask(__name__)
            db.init_app(app)
            sync.init_app(app, db)
            return app

    One object can serve several apps; each keeps its own state in
    ``app.extensions["reflectsync"]``.

    :param app: an app to register now (calls :meth:`init_app`).
    :param db: the app's :class:`~flask_sqlalchemy.SQLAlchemy`. If not given
        here or to :meth:`init_app`, the one registered on the app is used.
    :param options: defaults for configuration keys, named without the
        ``REFLECTSYNC_`` prefix in lower case (``url_prefix="/api/sync"``).
        The app's config wins over them.
    """

    def __init__(
        self, app: Flask | None = None, db: SQLAlchemy | None = None, **options: Any
    ) -> None:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(
                f"Unknown ReflectSync option(s): {', '.join(unknown)}. "
                f"Known options: {', '.join(sorted(_OPTIONS))}."
            )
        self.db = db
        #: The checks registered with :meth:`registration_check`.
        self.registration_checks: list[RegistrationCheck] = []
        #: The sync scopes declared with :meth:`scope` (see :doc:`/scopes`).
        self.scopes = Scopes()
        self.options = {_OPTIONS[name]: value for name, value in options.items()}
        if db is not None:
            define_server_log(db.metadata)
            define_key_reservations(db.metadata)
            define_push_rulings(db.metadata)
            define_column_names(db.metadata)
        if app is not None:
            self.init_app(app, db)

    @overload
    @staticmethod
    def track(
        cls: T,
        /,
        *,
        exclude: Iterable[str] | None = None,
        only: Iterable[str] | None = None,
    ) -> T: ...

    @overload
    @staticmethod
    def track(
        *, exclude: Iterable[str] | None = None, only: Iterable[str] | None = None
    ) -> Callable[[T], T]: ...

    @staticmethod
    def track(
        cls: Any = None,
        /,
        *,
        exclude: Iterable[str] | None = None,
        only: Iterable[str] | None = None,
    ) -> Any:
        """Same as :func:`flask_reflectsync.track`: ``@sync.track``,
        ``@sync.track(exclude=[...])`` or ``@sync.track(only=[...])``."""
        if cls is None:
            return track(exclude=exclude, only=only)
        return track(cls, exclude=exclude, only=only)

    def init_app(self, app: Flask, db: SQLAlchemy | None = None) -> None:
        """Register the extension on ``app``.

        Sets the ``REFLECTSYNC_*`` defaults, defines the extension's tables on
        ``db.metadata``, starts logging changes made through ``db.session`` and
        mounts the blueprint at ``REFLECTSYNC_URL_PREFIX``. Configuration
        changed after this call is ignored.

        :param app: the Flask application.
        :param db: the app's :class:`~flask_sqlalchemy.SQLAlchemy`; defaults to
            the one given to the constructor, then to the one registered on
            the app.
        :raises RuntimeError: if the extension is already registered on
            ``app``, or no Flask-SQLAlchemy object can be found.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A ReflectSync extension is already registered on this app; "
                "call init_app only once per application."
            )
        db = db or self.db or app.extensions.get("sqlalchemy")
        if db is None:
            raise RuntimeError(
                "ReflectSync needs the app's Flask-SQLAlchemy object: call "
                "db.init_app(app) first, or pass it as init_app(app, db)."
            )
        for key, default in CONFIG_DEFAULTS.items():
            app.config.setdefault(key, self.options.get(key, default))
        config = {key: app.config[key] for key in CONFIG_DEFAULTS}

        capture = _capture_mode(app, config)
        if capture == triggers.TRIGGERS:
            self._check_trigger_scopes()
            self._trigger_capture = True
        tables = define_server_log(db.metadata)
        define_key_reservations(db.metadata)
        define_push_rulings(db.metadata)
        define_column_names(db.metadata)
        log = OperationLog(
            tables=tables,
            assign_versions=True,
            tags=self._share_tag_reader,
            object_tags=self._share_object_tagger,
            database_capture=capture == triggers.TRIGGERS,
        )
        if config["REFLECTSYNC_TRACK_CHANGES"]:
            start_tracking(db.session, _log_of_current_app)

        url_prefix = config["REFLECTSYNC_URL_PREFIX"]
        blueprint = make_blueprint(config["REFLECTSYNC_BLUEPRINT_NAME"])
        # -- reflection catalog: tables on db.metadata, routes on the blueprint
        setup_catalog(db, blueprint)
        # -- sync server: nonce table on db.metadata, routes on the blueprint
        define_protocol_tables(db.metadata)
        add_sync_routes(blueprint)
        app.register_blueprint(blueprint, url_prefix=url_prefix)
        install_prefix_guard(app, url_prefix)
        if config["REFLECTSYNC_CLI_GROUP"]:
            app.cli.add_command(cli, name=config["REFLECTSYNC_CLI_GROUP"])

        app.extensions[EXTENSION_KEY] = state = AppState(
            extension=self, db=db, tables=tables, log=log, config=config
        )
        warn_untracked_links(state, TrackedSchema.of(db.metadata))

    #: Whether an app of this extension captures with triggers (see
    #: :meth:`_check_trigger_scopes`).
    _trigger_capture = False

    def _check_trigger_scopes(self) -> None:
        """Refuse share routing with trigger capture: the triggers do not
        compute share tags (see :ref:`database-capture`)."""
        routed = sorted(name for name, rule in self.scopes.rules.items() if rule.routed)
        if routed:
            raise ConfigurationError(
                'REFLECTSYNC_CAPTURE = "triggers" cannot be combined with sync '
                f"scopes that route rows to shares ({', '.join(routed)}): the "
                "capture triggers do not compute share tags. Use the default "
                'REFLECTSYNC_CAPTURE = "orm" with these scopes, or keep only '
                "read_only / hidden rules."
            )

    def capture_triggers(self, action: str, app: Flask | None = None) -> Any:
        """Install, remove or report the capture triggers of every
        tracked table of the app (see :ref:`database-capture`); what
        ``flask reflectsync triggers install|remove|status`` runs.

        :param action: ``"install"`` (idempotent; installing again
            upgrades), ``"remove"`` (idempotent) or ``"status"``.
        :return: the tables' names (install, remove) or their
            :class:`~flask_reflectsync.tracking.triggers.TableStatus`.
        :raises ConfigurationError: on a backend without capture triggers
            (any but PostgreSQL, MariaDB / MySQL and SQLite), for a key type
            the triggers cannot encode, or with scopes that route rows
            (install).
        """
        state = self.get_state(app)
        tracked = list(TrackedSchema.of(state.db.metadata).tables.values())
        with state.db.engine.begin() as connection:
            if action == "install":
                self._check_trigger_scopes()
                return triggers.install(connection, state.tables, tracked)
            if action == "remove":
                return triggers.remove(connection, tracked)
            if action == "status":
                return triggers.status(connection, state.tables, tracked)
        raise ValueError(f"unknown action {action!r}")

    def get_state(self, app: Flask | None = None) -> AppState:
        """The per-app state of ``app`` (default: the current app).

        :raises RuntimeError: if the extension is not registered on the app.
        """
        if app is None:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        state = app.extensions.get(EXTENSION_KEY)
        if state is None or state.extension is not self:
            raise RuntimeError(
                "The ReflectSync extension is not registered on this app; "
                "did you call sync.init_app(app, db)?"
            )
        return state  # type: ignore[no-any-return]

    def track_table(
        self,
        name: str,
        *,
        schema: str | None = None,
        app: Flask | None = None,
        exclude: Iterable[str] | None = None,
        only: Iterable[str] | None = None,
    ) -> sa.Table:
        """Track a table by its name, without a mapped class: a table
        another program created and writes (see :ref:`tracking-by-name`).

        The table is reflected from the app's database (that one table) onto
        ``db.metadata``, unless ``db.metadata`` defines it already, and
        tracked like a plain table passed to :func:`~flask_reflectsync.track`.
        Only the writes made through ``db.session`` are logged (Core
        ``insert`` / ``update`` / ``delete`` run with ``session.execute``);
        another program's own writes are not seen.

        :param name: the table's name.
        :param schema: its schema, if not the default one.
        :param app: the app whose database holds it (default: the current
            app).
        :param exclude: as for :func:`~flask_reflectsync.track`.
        :param only: as for :func:`~flask_reflectsync.track`.
        :return: the reflected :class:`~sqlalchemy.Table`.
        :raises ConfigurationError: the table does not exist, or has no
            primary key.
        """
        state = self.get_state(app)
        metadata = state.db.metadata
        key = f"{schema}.{name}" if schema else name
        table = metadata.tables.get(key)
        if table is None:
            target: Flask = (
                app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
            )
            with target.app_context():
                engine = state.db.engine
                try:
                    table = sa.Table(
                        name, metadata, schema=schema, autoload_with=engine
                    )
                except sa.exc.NoSuchTableError:
                    raise ConfigurationError(
                        f"track_table({key!r}): the app's database has no table "
                        f"{key!r}; create it first (or check the name and schema)."
                    ) from None
        return track(table, exclude=exclude, only=only)

    # -- reflection catalog ------------------------------------------------------

    #: The check registered with :meth:`catalog_access`, or ``None``.
    catalog_access_check: Callable[[], bool] | None = None

    def catalog_access(self, check: Callable[[], bool]) -> Callable[[], bool]:
        """Register the check that decides who may use the catalog routes.

        The check is called with no arguments inside the request (use
        :data:`flask.request`, or ``current_user`` from Flask-Login) and
        returns whether the request may proceed; ``False`` is answered with a
        403 JSON error. Without a check the routes are closed (403) unless
        ``REFLECTSYNC_OPEN_CATALOG = True`` opens them to anyone, which a
        :class:`~flask_reflectsync.errors.CatalogAccessWarning` points out
        once per app.
        Use it as a decorator::

            @sync.catalog_access
            def may_browse_catalog() -> bool:
                return current_user.is_authenticated and current_user.is_admin

        :param check: the callable; returned unchanged.
        """
        self.catalog_access_check = check
        return check

    def reflect(self, *, force: bool = False, app: Flask | None = None) -> list[Change]:
        """Reflect the database now: refresh every schema and its tables whose
        probe says it changed, send a signal per change and return them.

        Needs an app context (of ``app`` if given, else the current one).

        :param force: read every level in full, even where the probe says
            nothing changed.
        :param app: the app whose database to reflect (default: current app).
        :returns: the change records, in the order their signals were sent.
        """
        if app is None:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        self.get_state(app)
        with app.app_context():
            return catalog_for(app).reflect(force=force)

    def install_event_trigger(self, app: Flask | None = None) -> None:
        """Install PostgreSQL event triggers that tell the catalog about DDL.

        Optional: without them a cheap fingerprint probe detects changes. With
        them, a listing reads one row to learn whether anything changed, and
        ``NOTIFY reflectsync_ddl`` is sent on every DDL statement. Needs a
        role that may create event triggers (a superuser) and the catalog
        tables (``db.create_all()``). Idempotent. See :doc:`reflection`.

        :param app: the app whose database to use (default: current app).
        :raises ConfigurationError: on another backend than PostgreSQL, or if
            the role may not create event triggers.
        """
        state = self.get_state(app)
        with state.db.engine.begin() as connection:
            event_trigger.install(
                connection, define_catalog_tables(state.db.metadata).probes
            )

    def uninstall_event_trigger(self, app: Flask | None = None) -> None:
        """Remove what :meth:`install_event_trigger` created. Idempotent."""
        state = self.get_state(app)
        with state.db.engine.begin() as connection:
            event_trigger.uninstall(
                connection, define_catalog_tables(state.db.metadata).probes
            )

    # -- sync server ----------------------------------------------------------------

    def registration_check(self, check: RegistrationCheck) -> RegistrationCheck:
        """Register a check that decides whether a node may register.

        The check is called inside the ``POST /register`` request with the
        registration message (``name``, ``token``, ``info``) and returns
        whether the node may register; ``False`` is answered with a 403 JSON
        error. Every registered check must pass, as must the
        ``REFLECTSYNC_REGISTRATION_TOKEN`` when one is set. Use it as a
        decorator::

            @sync.registration_check
            def known_device(registration) -> bool:
                return registration.get("info", {}).get("serial") in SERIALS

        :param check: the callable; returned unchanged.
        """
        self.registration_checks.append(check)
        return check

    def scope(
        self,
        model: Any,
        column: Any = None,
        *,
        equals: str | None = None,
        follows: Any = None,
        read_only: bool = False,
        hidden: bool = False,
        moves: bool = False,
    ) -> None:
        """Declare which rows of a tracked model each node may read and
        write (its *share*; see :doc:`/scopes`). One rule per model::

            sync.scope(Survey, Survey.region, equals="region")
            sync.scope(Answer, follows=Answer.survey_id)
            sync.scope(Species, read_only=True)
            sync.scope(Salary, hidden=True)

        :param model: the tracked model (or its ``Table``).
        :param column: with ``equals``: the column whose value decides the
            share: a row belongs to the nodes whose principal attribute
            ``equals`` holds that value (or a list holding it).
        :param equals: the principal attribute compared with ``column``.
        :param follows: a foreign key column: a row belongs where the row
            it references belongs (a chain of ``follows`` rules must end at
            an ``equals`` rule).
        :param read_only: every node reads every row; no node may write.
        :param hidden: no node may read or write the table; sync routes
            answer as if it were not tracked.
        :param moves: allow nodes to move a row out of their share with an
            update (refused by default; the row is then evicted from the
            node).
        :raises ConfigurationError: the arguments do not make one rule.
        """
        rule = table_scope(
            model,
            column,
            equals=equals,
            follows=follows,
            read_only=read_only,
            hidden=hidden,
            moves=moves,
        )
        if rule.routed and self._trigger_capture:
            raise ConfigurationError(
                f"sync.scope({rule.table}): an app of this extension uses "
                'REFLECTSYNC_CAPTURE = "triggers", whose capture triggers do '
                "not compute share tags; routing scopes (equals, follows) "
                'need REFLECTSYNC_CAPTURE = "orm".'
            )
        self.scopes.declare(rule)

    def bind_node(
        self,
        node_id: int,
        principal: Mapping[str, Any] | None,
        *,
        app: Flask | None = None,
    ) -> None:
        """Give a registered node a new principal (the user moved team), and
        commit. The node's share changes with it: its next pull sends it
        the difference, the rows of its new share it did not have and
        evictions for those it may no longer see (see
        :ref:`principal changes <principal-changes>`).

        :raises NotFoundError: no node has this id.
        """
        state = self.get_state(app)
        session = state.db.session()
        try:
            found = bind_node(session, state.tables, node_id, principal)
            if not found:
                raise NotFoundError(f"No registered node has id {node_id}.")
            session.commit()
        except BaseException:
            session.rollback()
            raise

    def _share_tag_reader(self, info: TrackedTable) -> TagReader | None:
        """The share tags capture writes for ``info`` (see
        :class:`~.tracking.capture.OperationLog`)."""
        if not self.scopes:
            return None
        return self.scopes.tag_reader(info, current_schema().tables)

    def _share_object_tagger(self, info: TrackedTable) -> ObjectTagger | None:
        """How capture tags a flushed object of ``info`` (see
        :class:`~.tracking.capture.OperationLog`)."""
        if not self.scopes:
            return None
        return self.scopes.object_tagger(info)

    # -- fleet ------------------------------------------------------------------------

    def nodes(self, app: Flask | None = None) -> list[NodeInfo]:
        """Every registered node with its last contact, the version it has
        acknowledged, its lag behind the server and its state (see
        :class:`~flask_reflectsync.server.fleet.NodeInfo`); what
        ``flask reflectsync nodes`` prints."""
        state = self.get_state(app)
        engine = state.db.engine
        number_versions(engine, state.tables)
        with engine.connect() as connection:
            current = current_version(connection, state.tables)
            return fleet.list_nodes(
                connection,
                state.tables,
                ServerSettings.from_config(state.config),
                current,
            )

    def revoke_node(self, node_id: int, app: Flask | None = None) -> None:
        """Refuse node ``node_id`` on every signed route from now on (403,
        ``auth.revoked``; the node raises
        :exc:`~flask_reflectsync.errors.NodeRevokedError`). For a lost or
        stolen device; it cannot be undone (the device registers again as a
        new node). A revoked node no longer pins the trim watermark.

        :raises NotFoundError: no node has that id.
        """
        state = self.get_state(app)
        with state.db.engine.begin() as connection:
            fleet.revoke_node(connection, state.tables, node_id)

    def retire_node(self, node_id: int, app: Flask | None = None) -> None:
        """Stop node ``node_id`` from pinning the trim watermark. If it comes
        back, its pulls are answered 410 (``fleet.retired``; the node raises
        :exc:`~flask_reflectsync.errors.NodeRetiredError`) until it repairs.

        :raises NotFoundError: no node has that id.
        """
        state = self.get_state(app)
        with state.db.engine.begin() as connection:
            fleet.retire_node(connection, state.tables, node_id)

    def stop_tracking(self, app: Flask | None = None) -> None:
        """Stop logging changes made through the app's ``db.session``.

        Listeners are per ``db``: apps sharing one ``db`` share them too.
        """
        stop_tracking(self.get_state(app).db.session)
