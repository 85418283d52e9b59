"""``rlvr-linear`` command line: a thin layer over the Python API.

Each sub-command lives in its own module here and exposes ``register(subparsers)``; the handler it
sets with ``set_defaults(func=...)`` receives the parsed ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import RlvrLinearError

COMMANDS = ["base", "train", "eval", "analyze", "extrapolate", "generate", "reground", "study"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="rlvr-linear", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"rlvr-linear {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(f"cli.{name}"):
                continue  # command not built yet
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if not any("hf:/" in str(a) for a in raw):  # offline unless an argument names a Hub source (hf://ORG/REPO)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except RlvrLinearError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
