"""Tagged JSON for the builtin values that tests pass and return.

Plain JSON loses tuples, sets, bytes, non-finite floats and non-string dict keys; pickle must
never be read from a sandboxed process. This codec is used by the sandbox worker (stdlib only)
and by the benchmark loaders to ship test inputs and expected outputs.
"""

from __future__ import annotations

import base64
import collections
import math
from typing import Any

_BIG = 2**63
# dict subclasses from the standard library carried as plain dicts (they compare equal to one)
_DICT_LIKE = (collections.Counter, collections.OrderedDict, collections.defaultdict)


class UnsupportedValue(TypeError):
    """A value of a type the codec does not carry (a user-defined object, a generator, ...)."""


def encode(value: Any) -> Any:
    kind = type(value)
    if kind is int and not -_BIG <= value <= _BIG:
        return {"$x": hex(value)}  # linear time; decimal conversion of huge ints is quadratic
    if value is None or kind is bool or kind is int or kind is str:
        return value
    if kind is float:
        return value if math.isfinite(value) else {"$f": repr(value)}
    if kind is list:
        return [encode(v) for v in value]
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
