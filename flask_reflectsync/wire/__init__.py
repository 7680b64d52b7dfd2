"""What server and node both speak: the value codec, the message schemas,
request signing, and the operation records and message encodings both sides
read and write.

Imports neither :mod:`flask_reflectsync.server` nor
:mod:`flask_reflectsync.node` (checked by import-linter, see
docs/design.rst).
"""
