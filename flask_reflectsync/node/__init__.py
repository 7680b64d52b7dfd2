"""The offline node: :class:`~flask_reflectsync.node.client.SyncClient` and
its parts, the merge of pulled pages, set-aside changes and the
``reflectsync-node`` command line.

Never imports :mod:`flask_reflectsync.server` (checked by import-linter, see
docs/design.rst). ``flask_reflectsync.client`` re-exports the public names.
"""
