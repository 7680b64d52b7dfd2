"""A small field-survey server built on flask-reflectsync (see demo.py)."""
