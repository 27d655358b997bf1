"""Typed reads of JSON fields, each refusal naming the field it refuses.

One set of rules for what a field may hold (an int is not a bool and not "64", a number is
finite, a string matches its pattern or choices), shared by the bundle manifest
(``runtime/manifest.py``, ``ManifestError``) and the library's manifests and journal
(``runtime/library/schema.py``, ``LibraryError``): each makes a ``Fields`` with its own
error type and message prefix.

Every reader takes ``(d, key, where)``: the object, the field, and the dotted path of the
object (for messages). ``default``: the value when the field is absent (else it is
required); ``optional``: JSON null is allowed and read as None.
"""
from __future__ import annotations

import math
import re
from typing import Any

_ABSENT: Any = ...


class Fields:
    """Field readers that raise ``error(prefix + message)``."""

    def __init__(self, error: type[Exception], prefix: str = ""):
        self.error, self.prefix = error, prefix

    @staticmethod
    def path(where: str, key: str) -> str:
        return f"{where}.{key}" if where else key

    def req(self, d: Any, key: str, where: str, default: Any = _ABSENT) -> Any:
        """The raw value of ``key`` (``default`` if given and the field is absent)."""
        if not isinstance(d, dict):
            if default is not _ABSENT:
                return default
            raise self.error(f"{self.prefix}'{where or 'top level'}' is not an object")
        if key not in d:
            if default is not _ABSENT:
                return default
            raise self.error(f"{self.prefix}missing field '{self.path(where, key)}'")
        return d[key]

    def bad(self, where: str, key: str, what: str, value: Any) -> Exception:
        return self.error(f"{self.prefix}field '{self.path(where, key)}' must be {what} (got {repr(value)[:60]})")

    def int(self, d: Any, key: str, where: str, lo: int | None = None, hi: int | None = None,
            default: Any = _ABSENT) -> int:
        v = self.req(d, key, where, default)
        # bool is an int to Python, and "64" is not a number to JSON: refuse both.
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else \
                f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else ""
            raise self.bad(where, key, f"an integer{rng}", v)
        return v

    def float(self, d: Any, key: str, where: str, lo: float | None = None, hi: float | None = None,
              lo_open: bool = False, default: Any = _ABSENT, optional: bool = False) -> float | None:
        v = self.req(d, key, where, default)
        if v is None and optional:
            return None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        if ok and lo is not None:
            ok = float(v) > lo if lo_open else float(v) >= lo
        if ok and hi is not None:
            ok = float(v) <= hi
        if not ok:
            rng = "" if lo is None else (f" > {lo}" if lo_open else f" >= {lo}")
            rng += "" if hi is None else f"{' and' if lo is not None else ''} <= {hi}"
            raise self.bad(where, key, f"a finite number{rng}" + (" or null" if optional else ""), v)
        return float(v)

    def str(self, d: Any, key: str, where: str, choices: tuple[str, ...] | None = None,
            pattern: re.Pattern | None = None, nonempty: bool = False, default: Any = _ABSENT,
            optional: bool = False) -> str | None:
        v = self.req(d, key, where, default)
        if v is None and optional:
            return None
        if not isinstance(v, str) or (choices is not None and v not in choices) or (nonempty and not v) \
                or (pattern is not None and not pattern.match(v)):
            what = f"one of {', '.join(choices)}" if choices else \
                f"a string matching {pattern.pattern}" if pattern is not None else \
                "a non-empty string" if nonempty else "a string"
            raise self.bad(where, key, what + (" or null" if optional else ""), v)
        return v

    def bool(self, d: Any, key: str, where: str, default: Any = _ABSENT) -> bool:
        v = self.req(d, key, where, default)
        if not isinstance(v, bool):
            raise self.bad(where, key, "true or false", v)
        return v

    def list(self, d: Any, key: str, where: str, default: Any = _ABSENT) -> list:
        v = self.req(d, key, where, default)
        if not isinstance(v, (list, tuple)):  # tuples: a dict from to_dict() that skipped JSON
            raise self.bad(where, key, "a list", v)
        return list(v)

    def obj(self, d: Any, key: str, where: str, default: Any = _ABSENT) -> dict:
        v = self.req(d, key, where, default)
        if not isinstance(v, dict):
            raise self.bad(where, key, "an object", v)
        return v
