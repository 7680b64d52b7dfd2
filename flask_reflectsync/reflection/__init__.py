"""Catalog models, per-backend catalog snapshots and their diff."""
