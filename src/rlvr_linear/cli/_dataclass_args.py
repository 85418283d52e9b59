"""Command-line flags generated from a config dataclass, the way TRL's ``TrlParser`` / ``HfArgumentParser`` build them.

Every field becomes ``--field-name`` with the type of its annotation (``X | None`` -> ``X``; ``bool`` ->
``--x/--no-x``; ``list[X]`` -> comma-separated values; ``dict`` -> a JSON object) and the field's ``#:`` comment as
its help. Every flag defaults to ``None`` so that :func:`overrides` returns only what the user set: presets and
YAML files stay the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import types
import typing


def field_comments(cls) -> dict[str, str]:
    """``{field: text}`` of the ``#:`` comments that follow the fields in the class body (one line each)."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#:\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _json_object(text: str) -> dict:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return v


def _comma_list(elem):
    """``"1,2,3"`` -> ``[elem("1"), elem("2"), elem("3")]`` (empty items skipped)."""
    name = {int: "integers", float: "numbers", str: "values"}[elem]

    def parse(text: str) -> list:
        try:
            return [elem(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {name}, got {text!r}") from None

    parse.__name__ = f"comma-separated {name}"
    return parse


def _base_type(tp):
    """``X`` of ``X | None`` / ``Optional[X]``; the type itself otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls,
    aliases: dict[str, list[str]] | None = None,
    extra: dict[str, dict] | None = None,
    skip: set[str] = frozenset(),
    shown: tuple[str, dict] | None = None,
) -> list[str]:
    """Add one flag per field of the dataclass ``cls`` to ``parser``; returns the fields added.

    ``aliases``: more option strings of a field (``{"learning_rate": ["--lr"]}``, listed first); ``extra``: argparse
    keywords of a field that replace the generated ones (``help``, ``metavar``, ``choices``); ``shown``: ``(label,
    values)`` when what runs by default is not the dataclass's defaults (a preset): the help shows those values,
    named as the label's (``(default of preset tiny: 560)``).
    """
    hints = typing.get_type_hints(cls)
    helps = field_comments(cls)
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _base_type(hints[f.name])
        kw: dict = {"dest": f.name, "default": None}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif tp is dict or typing.get_origin(tp) is dict:
            kw["type"], kw["metavar"] = _json_object, "JSON"
        elif tp in (int, float, str):
            kw["type"] = tp
        elif typing.get_origin(tp) is list and typing.get_args(tp) and typing.get_args(tp)[0] in (int, float, str):
            kw["type"], kw["metavar"] = _comma_list(typing.get_args(tp)[0]), "A,B,..."
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line type for {tp!r}")
        text = helps.get(f.name, "").replace("``", "")
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        label = "default"
        if shown is not None and f.name in shown[1]:
            label, default = f"default of {shown[0]}", shown[1][f.name]
        if isinstance(default, list):
            default = ",".join(map(str, default))
        if default not in (dataclasses.MISSING, None, {}) and (tp is not bool or label != "default"):
            text = f"{text} ({label}: {default})" if text else f"{label}: {default}"
        kw["help"] = text.replace("%", "%%")
        kw.update((extra or {}).get(f.name, {}))
        flag = "--" + f.name.replace("_", "-")
        names = [*(aliases or {}).get(f.name, []), flag]
        parser.add_argument(*dict.fromkeys(names), **kw)
        added.append(f.name)
    return added


def overrides(args: argparse.Namespace, cls) -> dict:
    """The fields of ``cls`` the user set on the command line (flags left at ``None`` are not overrides)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
