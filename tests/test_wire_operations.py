"""The operation record's aliases are the class itself at run time."""

from __future__ import annotations

from flask_reflectsync.wire.operations import LoggedOperation, Operation, TypedOperation


def test_the_aliases_construct_plain_operations() -> None:
    # Calling a subscripted generic goes through typing's alias, which then
    # fails to set __orig_class__ on the frozen instance: about 0.9 us more
    # for every operation of a push (issue 12's push slowdown).
    assert LoggedOperation is Operation
    assert TypedOperation is Operation
    op = TypedOperation("t", (1,), "i")
    assert type(op) is Operation
    assert "__orig_class__" not in dir(op)
