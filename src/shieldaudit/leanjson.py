"""JSON for the hook's start path, without importing :mod:`json`.

``import json`` pulls in ``re``, ``enum``, ``functools`` and ``collections``: on
the reference machine that alone costs about half of a bare interpreter start,
which the hook's latency budget cannot pay. The C accelerator ``_json`` that
:mod:`json` itself uses is cheap to import, so this module drives it directly:

* :func:`loads` uses ``_json.make_scanner`` exactly as :mod:`json` does;
* :func:`dumps` produces byte for byte what
  ``json.dumps(value, ensure_ascii=True, separators=(",", ":"))`` produces for
  the types entries hold (str, int, bool, None, lists and string-keyed dicts),
  using ``_json.encode_basestring_ascii`` for strings. Anything else is refused,
  so the two can never silently disagree.

``_json`` ships with CPython, the only interpreter shieldaudit supports.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_WS = " \t\n\r"


class _ScannerContext:
    """The attributes ``_json.make_scanner`` reads (those of json.JSONDecoder)."""

    __slots__ = (
        "memo",
        "object_hook",
        "object_pairs_hook",
        "parse_constant",
        "parse_float",
        "parse_int",
        "strict",
    )

    def __init__(self) -> None:
        self.strict = True
        self.object_hook = None
        self.object_pairs_hook = None
        self.parse_float = float
        self.parse_int = int
        self.parse_constant = float  # NaN, Infinity, -Infinity, as json does
        self.memo: dict[str, str] = {}


_scan: Callable[[str, int], tuple[object, int]] = _json.make_scanner(_ScannerContext())  # type: ignore[arg-type]


def loads(text: str) -> object:
    """Parse one JSON document; raise ValueError when it is not exactly one.

    Deeply nested input raises ValueError too (not RecursionError).
    """
    start = len(text) - len(text.lstrip(_WS))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"expecting a JSON value at character {exc.value}") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if text[end:].strip(_WS):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return value


def decode_at(text: str, start: int) -> object:
    """Parse the one JSON value that starts at ``text[start]``, ignoring what follows it.

    Raises ValueError when no complete value starts there.
    """
    try:
        value, _end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"expecting a JSON value at character {exc.value}") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return value


def dumps(value: object) -> str:
    """Serialise compactly and ASCII-only, exactly like the chain's ``json.dumps`` call.

    Raises:
        TypeError: for a type entries never hold (floats included: their text
            form is not worth pinning here).
    """
    out: list[str] = []
    _encode(value, out, 0)
    return "".join(out)


_MAX_DEPTH = 32


def _string(text: str) -> str:
    result: str = _json.encode_basestring_ascii(text)
    return result


def _encode(value: object, out: list[str], depth: int) -> None:  # noqa: C901, PLR0912 -- one branch per type
    if depth > _MAX_DEPTH:
        raise TypeError("value nested too deeply for an entry")
    if isinstance(value, str):
        out.append(_string(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"entry keys must be strings, not {type(key).__name__}")
            if not first:
                out.append(",")
            first = False
            out.append(_string(key))
            out.append(":")
            _encode(item, out, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out, depth + 1)
        out.append("]")
    else:
        raise TypeError(f"cannot put a {type(value).__name__} in an entry")
