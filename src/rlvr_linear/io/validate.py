"""The checks of values that come in (config fields, YAML files, command-line options): one rule per field.

A :class:`Rule` says what a field accepts; :func:`check_fields` applies a table of rules to a config dataclass where
it is built (``__post_init__``), so a bad value stops the run before anything is written, with one line naming the
field, the value and what is allowed::

    learning_rate must be a finite number > 0 (got nan)
    steps must be an integer >= 1 (got 'ten')

Booleans are not integers or numbers here (``steps: true`` is refused). A number may be given as a string
(``learning_rate: 3e-4`` is a string to YAML 1.1) and is converted.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RlvrLinearError


@dataclass(frozen=True)
class Rule:
    """What one field accepts: ``what`` (as the error message says it) and ``accept``, which returns the value
    (converted) or raises ``ValueError`` / ``TypeError``; ``optional``: ``None`` is accepted too."""

    what: str
    accept: Callable[[Any], Any]
    optional: bool = False


def _num(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _bounds(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {_num(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {_num(hi)}"
    return ""


def _in_bounds(x, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    return (lo is None or (x > lo if lo_open else x >= lo)) and (hi is None or (x < hi if hi_open else x <= hi))


def _as_int(v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError
    return int(v)


def _as_float(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (numbers.Real, str)):
        raise TypeError
    x = float(v)
    if not math.isfinite(x):
        raise ValueError
    return x


def integer(lo: int | None = None, hi: int | None = None, optional: bool = False) -> Rule:
    """An integer in ``[lo, hi]`` (either end may be open-ended: ``None``)."""

    def accept(v):
        x = _as_int(v)
        if not _in_bounds(x, lo, hi, False, False):
            raise ValueError
        return x

    return Rule(f"an integer {_bounds(lo, hi, False, False)}".rstrip(), accept, optional)


def number(
    gt: float | None = None, ge: float | None = None, le: float | None = None, lt: float | None = None,
    optional: bool = False,
) -> Rule:  # fmt: skip
    """A finite real number, bounded by ``gt`` / ``ge`` below and ``le`` / ``lt`` above (at most one of each)."""
    lo, lo_open = (gt, True) if gt is not None else (ge, False)
    hi, hi_open = (lt, True) if lt is not None else (le, False)

    def accept(v):
        x = _as_float(v)
        if not _in_bounds(x, lo, hi, lo_open, hi_open):
            raise ValueError
        return x

    return Rule(f"a finite number {_bounds(lo, hi, lo_open, hi_open)}".rstrip(), accept, optional)


def text(optional: bool = False) -> Rule:
    """A non-empty string."""

    def accept(v):
        if not isinstance(v, str) or not v.strip():
            raise TypeError
        return v

    return Rule("a non-empty string", accept, optional)


def choice(options: Iterable[str], optional: bool = False) -> Rule:
    """One of ``options``."""
    opts = tuple(options)

    def accept(v):
        if not isinstance(v, str) or v not in opts:
            raise ValueError
        return v

    return Rule(f"one of {', '.join(opts)}", accept, optional)


def flag() -> Rule:
    """``True`` or ``False`` (not 0 / 1, not a string)."""

    def accept(v):
        if not isinstance(v, bool):
            raise TypeError
        return v

    return Rule("true or false", accept)


def mapping(optional: bool = False) -> Rule:
    """A mapping with string keys (returned as a ``dict``)."""

    def accept(v):
        if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
            raise TypeError
        return dict(v)

    return Rule("a mapping with string keys", accept, optional)


def list_of(rule: Rule, nonempty: bool = False, optional: bool = False) -> Rule:
    """A list (or tuple) whose every item follows ``rule``; returned as a list."""

    def accept(v):
        if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, Iterable):
            raise TypeError
        out = [rule.accept(x) for x in v]
        if nonempty and not out:
            raise ValueError
        return out

    return Rule(f"a {'non-empty ' if nonempty else ''}list of {_plural(rule.what)}", accept, optional)


def _plural(what: str) -> str:
    for a, b in (("an integer", "integers"), ("a finite number", "finite numbers"), ("a non-empty string", "strings")):
        if what.startswith(a):
            return b + what[len(a) :]
    return what


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (an error line stays one short line)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def check_value(name: str, value: Any, rule: Rule) -> Any:
    """``value`` converted by ``rule``; else :class:`RlvrLinearError` ``<name> must be <what> (got <value>)``."""
    if value is None and rule.optional:
        return None
    try:
        return rule.accept(value)
    except (TypeError, ValueError, OverflowError):
        raise RlvrLinearError(f"{name} must be {rule.what} (got {show(value)})") from None


def check_fields(obj: Any, rules: Mapping[str, Rule]) -> None:
    """Check every field of ``obj`` named in ``rules`` and store its converted value (``obj`` is changed)."""
    for name, rule in rules.items():
        setattr(obj, name, check_value(name, getattr(obj, name), rule))


def read_yaml_mapping(path: str | Path, what: str = "config fields") -> dict:
    """The top-level mapping of a YAML file (an empty file is ``{}``); one error line naming the file otherwise."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise RlvrLinearError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RlvrLinearError(f"{p}: not a text file (not UTF-8)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise RlvrLinearError(f"{p}: not valid YAML{where} ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RlvrLinearError(f"{p}: expected a mapping of {what} (name: value lines), got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise RlvrLinearError(f"{p}: field names must be strings, got {show(bad)}")
    return data
