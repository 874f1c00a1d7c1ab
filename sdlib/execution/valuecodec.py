"""Tagged JSON for the builtin values that tests pass and return.

Plain JSON loses tuples, sets, bytes, non-finite floats and non-string dict keys; pickle must
never be read from a sandboxed process. This codec is used by the sandbox worker (stdlib only)
and by the benchmark loaders to ship test inputs and expected outputs.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import math
from array import array
from typing import Any

_BIG = 2**63
# Bytes of an answer's JSON text above which a job sends only its digest (the trusted side
# asks for the value only when it differs from the expected one's).
DIGEST_OVER = 16 << 10
# dict subclasses from the standard library carried as plain dicts (they compare equal to one)
_DICT_LIKE = (collections.Counter, collections.OrderedDict, collections.defaultdict)


class UnsupportedValue(TypeError):
    """A value of a type the codec does not carry (a user-defined object, a generator, ...)."""


_JSON_SCALARS = frozenset({type(None), bool, int, float, str})
_NUMBERS = frozenset({int, float})
_EXACT_IN_DOUBLE = 2**53


def carried_as_is(values: list) -> bool:
    """A list JSON carries unchanged: scalars only, ints within 64 bits, floats finite.
    Checked by C loops (a list of ten million floats is a real HumanEval+ answer)."""
    kinds = set(map(type, values))
    if not kinds <= _JSON_SCALARS:
        return False
    if not kinds & _NUMBERS:
        return True
    if kinds - _NUMBERS - {bool}:
        return False  # numbers mixed with strings or None: checked one by one
    try:  # bounds rule out inf and huge ints; the sum rules out nan
        return -_BIG <= min(values) and max(values) <= _BIG and math.isfinite(sum(values))
    except (TypeError, OverflowError):
        return False


def encode(value: Any) -> Any:
    kind = type(value)
    if kind is int and not -_BIG <= value <= _BIG:
        return {"$x": hex(value)}  # linear time; decimal conversion of huge ints is quadratic
    if value is None or kind is bool or kind is int or kind is str:
        return value
    if kind is float:
        return value if math.isfinite(value) else {"$f": repr(value)}
    if kind is list:
        return value[:] if carried_as_is(value) else [encode(v) for v in value]
    if kind is tuple:
        return {"$t": [encode(v) for v in value]}
    if kind is set:
        return {"$s": [encode(v) for v in value]}
    if kind is frozenset:
        return {"$fs": [encode(v) for v in value]}
    if kind is dict or kind in _DICT_LIKE:
        return {"$d": [[encode(k), encode(v)] for k, v in value.items()]}
    if kind is bytes:
        return {"$b": base64.b64encode(value).decode("ascii")}
    if kind is complex:
        return {"$c": [encode(value.real), encode(value.imag)]}
    raise UnsupportedValue(f"cannot encode a value of type {kind.__name__}")


def digest(wire: Any) -> str:
    """SHA-256 of a value's wire form, the same in the job and on the trusted side: equal
    digests mean equal values, so a large answer need not travel. Long strings and lists of
    numbers are hashed as their bytes, which is many times faster than as JSON text."""
    if type(wire) is str:
        data = b"s" + wire.encode("utf-8", "surrogatepass")
    elif type(wire) is list and wire and set(map(type, wire)) <= _NUMBERS:
        if -_EXACT_IN_DOUBLE <= min(wire) and max(wire) <= _EXACT_IN_DOUBLE:
            # every number exactly a double (floats on the wire are finite): 1 and 1.0
            # hash alike, as they compare equal
            data = b"d" + array("d", wire).tobytes()
        else:
            data = b"j" + json.dumps(wire).encode()
    else:
        data = b"j" + json.dumps(wire).encode()
    return hashlib.sha256(data).hexdigest()


def wire_is_floats(wire) -> bool:
    """EvalPlus's ``is_floats`` (a float, or a non-empty list or tuple of floats) of a value
    still in its wire form: not decoded, as it may be huge."""

    def is_float(w) -> bool:
        return type(w) is float or (type(w) is dict and "$f" in w)

    if type(wire) is dict and "$t" in wire:
        wire = wire["$t"]
    elif type(wire) is not list:
        return is_float(wire)
    kinds = set(map(type, wire))
    return bool(wire) and (
        kinds == {float} or (kinds <= {float, dict} and all(map(is_float, wire)))
    )


def decode(data: Any) -> Any:
    kind = type(data)
    if kind is list:
        return [decode(v) for v in data]
    if kind is not dict:
        return data
    if "$t" in data:
        return tuple(decode(v) for v in data["$t"])
    if "$s" in data:
        return {decode(v) for v in data["$s"]}
    if "$fs" in data:
        return frozenset(decode(v) for v in data["$fs"])
    if "$d" in data:
        return {decode(k): decode(v) for k, v in data["$d"]}
    if "$x" in data:
        return int(data["$x"], 16)
    if "$f" in data:
        return float(data["$f"])
    if "$b" in data:
        return base64.b64decode(data["$b"])
    if "$c" in data:
        re_, im = data["$c"]
        return complex(decode(re_), decode(im))
    raise UnsupportedValue(f"unknown tag in {sorted(data)}")
