"""Column values on the wire: a type-aware JSON codec.

Each column gets a :class:`ColumnCodec` chosen from its SQLAlchemy type. JSON
has no dates, decimals or bytes, so those travel as strings in a fixed form:

==================  ===========================================================
column type         JSON form
==================  ===========================================================
Integer, Boolean    number, ``true``/``false``
Float               number
Numeric (decimal)   string (``"12.3400"``): exact, no binary rounding
Date, Time          ISO 8601 string
DateTime            ISO 8601 string; columns with ``timezone=True`` require an
                    offset and are answered in UTC
LargeBinary         base64 string
Uuid                canonical string (``"1b4e28ba-2fa1-11d2-883f-0016d3cca427"``)
JSON                the JSON value itself
String, Text, Enum  string
==================  ===========================================================

``None`` is ``null`` for every type. A value of the wrong type raises
:class:`~flask_reflectsync.errors.ValidationError` naming the column.

:meth:`ColumnCodec.problem` says what the server could not store of a decoded
value: an integer outside the range of the column's type (``Integer`` is 32
bits, ``SmallInteger`` 16, ``BigInteger`` 64, on every backend), a string
longer than ``String(n)``, a NUL character or an unpaired surrogate in text.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import ValidationError

if TYPE_CHECKING:
    from ..tracking import TrackedTable

Decoder = Callable[[Any], Any]
Encoder = Callable[[Any], Any]

_UTC = datetime.timezone.utc

#: What a codec's ``decode`` raises for a value that does not fit.
DECODE_ERRORS = (ValueError, TypeError, ArithmeticError, binascii.Error)


@dataclass(frozen=True)
class ColumnCodec:
    """How one column's values are written to and read from JSON.

    :param name: the column name.
    :param kind: a short type name used in error messages and the OpenAPI
        document (``"integer"``, ``"decimal"``, ``"datetime"``, ...).
    :param encode: database value -> JSON value.
    :param decode: JSON value -> database value; raises ``ValueError`` or
        ``TypeError`` when the value does not fit.
    :param from_text: query-string text -> database value, or ``None`` when
        the column cannot be filtered on.
    :param nullable: whether ``null`` is accepted.
    :param max_length: the declared length of a string column.
    :param int_range: the smallest and largest value of an integer column's
        type.
    :param is_text: whether decoded values are text (checked for NUL and
        unpaired surrogates).
    :param integer_digits: how many digits a ``Numeric(precision, scale)``
        column holds before the decimal point.
    """

    name: str
    kind: str
    encode: Encoder
    decode: Decoder
    from_text: Decoder | None
    nullable: bool = True
    max_length: int | None = None
    int_range: tuple[int, int] | None = None
    is_text: bool = False
    integer_digits: int | None = None

    def problem(self, value: Any) -> str | None:
        """What keeps a decoded value out of this column, or ``None``.

        :return: the end of a sentence (``"holds at most 100 characters, got
            101"``) that follows the column's name.
        """
        if value is None:
            return None if self.nullable else "cannot be null"
        if self.int_range is not None:
            low, high = self.int_range
            if not low <= value <= high:
                return f"holds integers from {low} to {high}, got {_show(value)}"
        elif self.is_text:
            if self.max_length is not None and len(value) > self.max_length:
                return (
                    f"holds at most {self.max_length} characters, got {len(value)}"
                )
            if UNSTORABLE_TEXT.search(value):
                return "cannot hold NUL characters or unpaired surrogates"
        elif self.integer_digits is not None:
            if value.adjusted() >= self.integer_digits:
                return (
                    f"holds at most {self.integer_digits} digits before the "
                    f"point, got {_show(str(value))}"
                )
        return None

    def to_db(self, value: Any, where: str) -> Any:
        """Decode one JSON value for this column.

        :param where: names the value in the error message (``"city row 3"``).
        :raises ValidationError: if the value does not fit the column.
        """
        if not self.nullable and value is None:
            raise ValidationError(f"{where}: column {self.name!r} cannot be null.")
        if value is None:
            return None
        try:
            decoded = self.decode(value)
        except DECODE_ERRORS:
            raise ValidationError(
                f"{where}: column {self.name!r} expects {self.kind}, "
                f"got {_show(value)}."
            ) from None
        if self.max_length is not None and len(decoded) > self.max_length:
            raise ValidationError(
                f"{where}: column {self.name!r} holds at most {self.max_length} "
                f"characters, got {len(decoded)}."
            )
        return decoded

    def to_json(self, value: Any) -> Any:
        """Encode one database value for this column."""
        return None if value is None else self.encode(value)

    @property
    def json_as_is(self) -> bool:
        """Whether database values of this column are their own JSON form."""
        return self.encode is _same

    @property
    def exact_type(self) -> type | None:
        """The JSON value type that :attr:`decode` returns unchanged
        (``int`` for integers, ...), or ``None``: a column of values all of
        that exact type (or ``None``) needs no decoding."""
        return _EXACT_TYPES.get(self.decode)

    def parse_text(self, text: str, where: str) -> Any:
        """Decode a query-string value for this column.

        :raises ValidationError: if the column cannot be filtered on, or the
            text does not fit it.
        """
        if self.from_text is None:
            raise ValidationError(f"{where}: column {self.name!r} cannot be filtered.")
        try:
            value = self.from_text(text)
        except DECODE_ERRORS:
            raise ValidationError(
                f"{where}: column {self.name!r} expects {self.kind}, got "
                f"{_show(text)}."
            ) from None
        problem = None if value is None else self.problem(value)
        if problem is not None:
            raise ValidationError(f"{where}: column {self.name!r} {problem}.")
        return value


def _show(value: Any) -> str:
    if isinstance(value, int) and len(str(abs(value))) > 30:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: Text no backend's driver stores as sent: PostgreSQL refuses NUL, and an
#: unpaired surrogate has no UTF-8 form.
UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")
#: Integers in query-string text: ASCII digits only (``int()`` also takes
#: other scripts' digits, underscores and spaces).
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,40}")


# -- per-type functions -----------------------------------------------------------


def _same(value: Any) -> Any:
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value


def _int_text(text: str) -> int:
    if not _INTEGER_TEXT.fullmatch(text):
        raise ValueError(text)
    return int(text)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("not a boolean")
    return value


def _bool_text(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(text)


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not a number")
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError("decimals travel as strings")
    result = decimal.Decimal(value)
    if not result.is_finite():
        raise ValueError("not a finite decimal")
    return result


def _date(value: Any) -> datetime.date:
    return datetime.date.fromisoformat(_str(value))


def _time(value: Any) -> datetime.time:
    return datetime.time.fromisoformat(_str(value))


def _naive_datetime(value: Any) -> datetime.datetime:
    result = datetime.datetime.fromisoformat(_str(value))
    if result.tzinfo is not None:
        raise ValueError("this column stores datetimes without a time zone")
    return result


def _aware_datetime(value: Any) -> datetime.datetime:
    result = datetime.datetime.fromisoformat(_str(value))
    if result.tzinfo is None:
        raise ValueError("this column needs a time zone offset")
    return result.astimezone(_UTC)


def _encode_aware(value: datetime.datetime) -> str:
    # Backends without time zone storage (SQLite, MySQL DATETIME) hand back
    # naive values; the server writes them in UTC (see _store_naive_utc).
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    return value.astimezone(_UTC).isoformat()


def _isoformat(value: Any) -> str:
    return str(value.isoformat())


def _bytes(value: Any) -> bytes:
    return base64.b64decode(_str(value), validate=True)


def _encode_bytes(value: bytes) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(_str(value))


def _uuid_str(value: Any) -> str:
    return str(_uuid(value))


def _json_value(value: Any) -> Any:
    return value


#: Decoders that return a value of exactly this type unchanged.
_EXACT_TYPES: dict[Decoder, type] = {_int: int, _bool: bool, _float: float, _str: str}


# -- choosing a codec ---------------------------------------------------------------


def codec_for(column: sa.Column[Any], *, aware_storage: bool = True) -> ColumnCodec:
    """The codec of ``column``.

    :param aware_storage: whether the database keeps time zones
        (PostgreSQL). When it does not, aware datetimes are stored as naive
        UTC and read back as UTC.
    """
    kind, encode, decode, from_text = _functions(column.type, aware_storage)
    length = getattr(column.type, "length", None)
    is_text = decode is _str
    return ColumnCodec(
        name=column.name,
        kind=kind,
        encode=encode,
        decode=decode,
        from_text=from_text,
        nullable=bool(column.nullable),
        max_length=length if is_text and isinstance(length, int) else None,
        int_range=integer_range(column.type) if decode is _int else None,
        is_text=is_text,
        integer_digits=_integer_digits(column.type) if decode is _decimal else None,
    )


def _integer_digits(type_: sa.types.TypeEngine[Any]) -> int | None:
    if isinstance(type_, sa.types.TypeDecorator):
        type_ = type_.impl_instance
    precision = getattr(type_, "precision", None)
    scale = getattr(type_, "scale", None) or 0
    return precision - scale if isinstance(precision, int) else None


def integer_range(type_: sa.types.TypeEngine[Any]) -> tuple[int, int]:
    """The smallest and largest value an integer type holds.

    Decided by the SQLAlchemy type, not the backend, so that every server
    accepts the same values: ``Integer`` holds 32 bits even on SQLite.
    """
    if isinstance(type_, sa.types.TypeDecorator):
        type_ = type_.impl_instance
    bits = 32
    if isinstance(type_, sa.BigInteger):
        bits = 64
    elif isinstance(type_, sa.SmallInteger):
        bits = 16
    else:
        # MySQL's own sizes, by name: TINYINT and MEDIUMINT are plain Integers.
        bits = {"TINYINT": 8, "MEDIUMINT": 24}.get(type(type_).__name__, bits)
    if getattr(type_, "unsigned", False):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _functions(
    type_: sa.types.TypeEngine[Any], aware_storage: bool
) -> tuple[str, Encoder, Decoder, Decoder | None]:
    if isinstance(type_, sa.types.TypeDecorator):
        type_ = type_.impl_instance
    if isinstance(type_, sa.JSON):
        return "any JSON value", _same, _json_value, None
    if isinstance(type_, sa.Boolean):
        return "a boolean", _same, _bool, _bool_text
    if isinstance(type_, sa.Integer):
        return "an integer", _same, _int, _int_text
    if isinstance(type_, sa.Float) or (
        isinstance(type_, sa.Numeric) and not type_.asdecimal
    ):
        return "a number", _same, _float, float
    if isinstance(type_, sa.Numeric):
        return "a decimal string", str, _decimal, decimal.Decimal
    if isinstance(type_, sa.DateTime):
        if type_.timezone:
            decode = _aware_datetime if aware_storage else _store_naive_utc
            return "an ISO 8601 datetime with offset", _encode_aware, decode, decode
        return "an ISO 8601 datetime", _isoformat, _naive_datetime, _naive_datetime
    if isinstance(type_, sa.Date):
        return "an ISO 8601 date", _isoformat, _date, _date
    if isinstance(type_, sa.Time):
        return "an ISO 8601 time", _isoformat, _time, _time
    if isinstance(type_, sa.Uuid):
        if type_.as_uuid:
            return "a UUID string", str, _uuid, _uuid
        return "a UUID string", str, _uuid_str, _uuid_str
    if isinstance(type_, sa.types._Binary):
        return "base64 text", _encode_bytes, _bytes, _bytes
    if isinstance(type_, (sa.String, sa.Enum)):
        return "a string", _same, _str, _str
    return "a JSON scalar", _same, _json_value, _same


def _store_naive_utc(value: Any) -> datetime.datetime:
    return _aware_datetime(value).replace(tzinfo=None)


def table_codecs(
    table: sa.Table, *, aware_storage: bool = True
) -> dict[str, ColumnCodec]:
    """Codecs of every column of ``table``, by column name, in column order."""
    return {c.name: codec_for(c, aware_storage=aware_storage) for c in table.columns}


def synced_codecs(
    info: TrackedTable, *, aware_storage: bool = True
) -> dict[str, ColumnCodec]:
    """Codecs of the columns of ``info`` that travel, by column name, in
    column order: every column of its table but those kept out of sync
    (``track(exclude=...)``, ``track(only=...)``). What every route and the
    node read, write and decode; :func:`table_codecs` is for the node's own
    storage."""
    return {
        c.name: codec_for(c, aware_storage=aware_storage) for c in info.synced_columns
    }


def stores_time_zones(dialect: sa.Dialect) -> bool:
    """Whether ``dialect``'s DateTime(timezone=True) keeps the offset."""
    return dialect.name == "postgresql"


def key_codecs(
    info: TrackedTable, codecs: Sequence[ColumnCodec]
) -> list[ColumnCodec]:
    """The codecs of ``info``'s key columns, in key order, from ``codecs``
    (of the table's columns or of its synced ones)."""
    by_name = {c.name: c for c in codecs}
    return [by_name[c.name] for c in info.pk_columns]


def key_from_log(
    values: Sequence[Any], codecs: Sequence[ColumnCodec]
) -> tuple[Any, ...]:
    """Typed primary-key values from a logged key (see
    :mod:`flask_reflectsync.tracking.keys`): UUIDs, dates and decimals are
    logged as strings, bytes as hex."""
    typed = []
    for value, codec in zip(values, codecs, strict=True):
        if value is not None and codec.decode is _bytes:
            typed.append(bytes.fromhex(value))
        elif (
            value is not None and codec.from_text is not None and isinstance(value, str)
        ):
            typed.append(codec.from_text(value))
        else:
            typed.append(value)
    return tuple(typed)
