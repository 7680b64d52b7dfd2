"""Decoding what the server sends a node in bulk: a pull page's column-wise
payloads (``{"columns": [...], "values": [[...], ...]}``, one array per
column, see :doc:`/design`) and a repair stream's rows, with the node's
column codecs. Columns only the server has are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .codec import ColumnCodec


def decode_columns(
    codecs_: Mapping[str, ColumnCodec], payload: Mapping[str, Any], length: int
) -> tuple[list[str], list[list[Any]]]:
    """A column-wise payload (``{"columns": [...], "values": [[...], ...]}``,
    one array per column), decoded: the names of the columns the node has and
    their values (a column only the server has is left out).

    :param length: how many values each column must hold.
    :raises ValueError, TypeError: a column of the wrong length, or a value
        that does not fit its column.
    """
    columns = list(payload["columns"])
    values = payload["values"]
    if len(values) != len(columns) or any(
        type(column) is not list or len(column) != length for column in values
    ):
        raise ValueError("the values do not match the columns")
    names: list[str] = []
    decoded: list[list[Any]] = []
    for name, column in zip(columns, values, strict=True):
        codec = codecs_.get(name)
        if codec is not None:
            names.append(name)
            decoded.append(decode_column(codec, column))
    return names, decoded


def decode_column(codec: ColumnCodec, column: list[Any]) -> list[Any]:
    exact = codec.exact_type
    if exact is not None and set(map(type, column)) <= {exact, type(None)}:
        return column  # already the database values
    decode = codec.decode
    return [None if v is None else decode(v) for v in column]


def decode_row(
    codecs_: Mapping[str, ColumnCodec], columns: Sequence[str], values: Sequence[Any]
) -> dict[str, Any]:
    row = {}
    for name, value in zip(columns, values, strict=True):
        codec = codecs_.get(name)
        if codec is not None:  # a column only the server has is ignored
            row[name] = None if value is None else codec.decode(value)
    return row
