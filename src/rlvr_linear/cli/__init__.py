"""``rlvr-linear`` command line: a thin layer over the Python API.

Each sub-command lives in its own module here and exposes ``register(subparsers)``; the handler it
sets with ``set_defaults(func=...)`` receives the parsed ``argparse.Namespace``.

May import: every package (``errors``, ``runtime``, ``io``, ``evaluation``, ``reporting``, ``models``,
``linearity``, ``extrapolation``, ``advisor``, ``training``, ``study``, ``regime``); only ``rlvr_linear.__main__``
imports it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import RlvrLinearError

COMMANDS = ["base", "train", "eval", "analyze", "sketch", "extrapolate", "generate", "reground", "advise", "study"]


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
    _add_threads(p)
    return p


def _add_threads(p: argparse.ArgumentParser) -> None:
    """``--threads N`` on every leaf command that lacks one (see :mod:`rlvr_linear.runtime.threads`)."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    for a in subs:
        for child in set(a.choices.values()):
            _add_threads(child)
    if not subs and p.prog != "rlvr-linear" and "--threads" not in p._option_string_actions:
        p.add_argument(
            "--threads", type=int, default=None,
            help="torch CPU threads (default: OMP_NUM_THREADS if set, else 1 for small models, all cores for large)",
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if not any("hf:/" in str(a) for a in raw):  # offline unless an argument names a Hub source (hf://ORG/REPO)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not sys.stderr.isatty():  # progress bars only on a terminal (ours: tqdm's disable=None); a log gets no \r lines
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the Hub's and transformers' bars
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        from ..io.validate import check_value, integer
        from ..runtime.threads import configure

        threads = check_value("threads", getattr(args, "threads", None), integer(1, optional=True))
        configure(threads)  # --threads, else OMP_NUM_THREADS, else 1 until a model is known
        rc = args.func(args)
    except RlvrLinearError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a read-only or missing folder: one line naming the path
        print(f"error: {os_error_message(e, getattr(args, 'out', None))}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__name__ != "SafetensorError" or "os error" not in str(e):
            raise
        print(f"error: {os_error_message(e, getattr(args, 'out', None))}", file=sys.stderr)  # safetensors' I/O errors
        return 2
    return int(rc or 0)


def os_error_message(e: BaseException, out: str | None = None) -> str:
    """``PATH: reason`` for an I/O error; the command's output folder stands in when the error names no file."""
    reason = getattr(e, "strerror", None) or str(e)
    name = getattr(e, "filename", None)
    if name:
        return f"{name}: {reason}"
    return f"{out}: cannot write the output ({reason})" if out else f"I/O error ({reason})"


if __name__ == "__main__":
    sys.exit(main())
