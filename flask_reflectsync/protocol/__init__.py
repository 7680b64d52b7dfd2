"""The old home of the wire format and the server handlers, kept so that
documented import paths still work (issue 12 gave each side its own package).

The code now lives in :mod:`flask_reflectsync.wire` (what both sides speak),
:mod:`flask_reflectsync.server` (the server's handlers) and
:mod:`flask_reflectsync.node` (the offline node, its merge included). The
modules left here only re-export.
"""
