"""Helpers shared by the fault and safety tests: run the CLI in-process and read its one error line."""

from __future__ import annotations

import re

import torch

from rlvr_linear.cli import main


def cli_out_err(capsys, *args) -> tuple[int, str, str]:
    """Run ``rlvr-linear ARGS`` in this process; its exit status, stdout and stderr."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def cli_err(capsys, *args) -> tuple[int, str]:
    """Run ``rlvr-linear ARGS`` in this process; its exit status and stderr."""
    rc, _, err = cli_out_err(capsys, *args)
    return rc, err


def one_error_line(err: str) -> str:
    """The single ``error: ...`` line, last on stderr (progress bars and library reports aside), and no traceback."""
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def linear_drift(name, w, step, i):
    """A ``make_trajectory`` update: every weight moves on a straight line in the step."""
    return w + 1e-3 * step * torch.linspace(-1, 1, w.numel()).reshape(w.shape)
