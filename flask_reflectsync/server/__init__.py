"""The sync server's handlers and server-only tables, framework-free: plain
data and a SQLAlchemy session in, plain data out. The Flask views over them
live in :mod:`flask_reflectsync.blueprints`.

Never imports :mod:`flask_reflectsync.node` (checked by import-linter, see
docs/design.rst).
"""
