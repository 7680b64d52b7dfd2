"""``python -m flask_reflectsync``: the node command line (``reflectsync-node``)."""

from __future__ import annotations

from .node.cli import main

if __name__ == "__main__":
    main()
