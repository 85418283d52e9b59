"""The any-trainer re-grounding driver (``rlvr-linear reground``): periodic re-grounding around a command line.

Out-of-process counterpart of :class:`~rlvr_linear.training.regrounding.ReGroundingCallback`, for any trainer with a
command line (verl, OpenRLHF, TRL scripts, ``rlvr-linear train``): run the command for M steps, find the checkpoint
it wrote, extrapolate it N steps further with :func:`rlvr_linear.extrapolation.weights.extrapolate_two_point`
(``alpha = (M + N) / M`` from the cycle's input model) and restart the command from the projection. Each finished
phase is recorded in ``WORKDIR/reground_state.json``, so a killed driver resumes where it stopped. The paper's
setup (§6.1) restarts its verl job every cycle in exactly this way, which also resets the optimizer's moments.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from ..errors import RlvrLinearError
from ..extrapolation.params import NORM_POLICIES
from ..io import read_json, write_json
from ..io.atomic import output_folder
from ..io.outputs import make_dirs, remove_created
from .regrounding import _check_choice, _check_mn

STATE_FILE = "reground_state.json"
SUMMARY_FILE = "reground_summary.json"


def find_final_checkpoint(out: str | os.PathLike, expected_step: int | None = None) -> tuple[Path, int | None]:
    """The final HF checkpoint a trainer wrote into ``out``: ``(model_dir, step)``.

    Looks for our ``step_N/`` (via ``manifest.json``), TRL ``checkpoint-N/`` and verl
    ``global_step_N/actor/huggingface/`` and takes the largest step. If that step is not ``expected_step`` but ``out``
    itself holds weights (e.g. ``trainer.save_model(out)`` at the end), ``out`` is taken, with step None.
    """
    from ..io.checkpoints import discover, find_model_dir

    out = Path(out)
    if not out.is_dir():
        raise RlvrLinearError(f"{out}: the trainer command did not create its output directory")
    last = None
    try:
        last = discover(out).checkpoints[-1]
    except RlvrLinearError:
        pass
    if last is not None and (expected_step is None or last.step == expected_step):
        return last.path, last.step
    try:
        return find_model_dir(out), None
    except RlvrLinearError:
        pass
    if last is not None:
        raise RlvrLinearError(
            f"{out}: the last checkpoint is step {last.step} but {expected_step} steps were asked for "
            "(make the command train {steps} steps and save at the end)"
        )
    raise RlvrLinearError(
        f"{out}: no checkpoint found (looked for manifest.json, step_N/, checkpoint-N/, "
        "global_step_N/actor/huggingface/ and weights in the directory itself)"
    )


def _extrapolate(base, second, out, *, alpha, norms, metadata, allow_pickle=False):
    """Write the projection with :func:`rlvr_linear.extrapolation.weights.extrapolate_two_point` (tests swap it).

    ``force=True``: alpha = (M+N)/M is the user's explicit plan, so the (0, 20] sanity bound does not apply.
    The recorded steps are effective steps: base = b, second = b + M, target = b + M + N.
    """
    from ..extrapolation.weights import extrapolate_two_point

    r = metadata["reground"]
    base_step = r["effective_step"] - r["m"] - r["n"]
    return extrapolate_two_point(
        base,
        second,
        out,
        alpha=alpha,
        norms=norms,
        overwrite=True,
        force=True,
        metadata=metadata,
        base_step=base_step,
        second_step=base_step + r["m"],
        progress=False,
        allow_pickle=allow_pickle,
    )


PLACEHOLDERS = ("{model}", "{steps}", "{out}", "{cycle}")
_PLACEHOLDER_RE = re.compile("|".join(map(re.escape, PLACEHOLDERS)))
#: the characters of shell operators (``;``, ``&&``, ``|``, ``>``, ``$(...)`` ...): outside quotes, refused
SHELL_PUNCTUATION = "();<>|&"


def split_command(cmd_template: str) -> list[str]:
    """The command's words, split once as a POSIX shell would (``shlex.split``: quotes group words, nothing else).

    The trainer runs without a shell, so shell syntax outside quotes (``;``, ``&&``, ``|``, ``>``, ``$(...)``: the
    characters of :data:`SHELL_PUNCTUATION`) is refused rather than passed on as arguments; for shell syntax, run a
    shell explicitly and pass the placeholders as its arguments:
    ``bash -c 'cd /src && python t.py --model "$1" --out "$2"' _ {model} {out}``.
    """
    text = cmd_template.replace("\\\n", "")  # a backslash-newline continues the line, as in a shell
    lexer = shlex.shlex(text, posix=True, punctuation_chars=SHELL_PUNCTUATION)
    lexer.whitespace_split = True  # (quoted text stays one token; unquoted operators become tokens of their own)
    try:
        words, tokens = shlex.split(text), list(lexer)
    except ValueError as e:
        raise RlvrLinearError(f"the trainer command cannot be split into words ({e}): {cmd_template}") from None
    if not words:
        raise RlvrLinearError("the trainer command is empty")
    ops = [t for t in tokens if t and not t.strip(SHELL_PUNCTUATION)]
    if ops:
        raise RlvrLinearError(
            f"the trainer command runs without a shell, so {ops[0]!r} would reach the program as an argument; "
            'for shell syntax write --cmd \'bash -c "..." _ {model} {out}\' and use "$1", "$2" in the script'
        )
    return words


def render_command(cmd_template: str, *, model: str | Path, steps: int, out: str | Path, cycle: int) -> list[str]:
    """The argv of one cycle: the template split into words (:func:`split_command`), then ``{model}``, ``{steps}``,
    ``{out}`` and ``{cycle}`` substituted inside each word.

    Substituting after splitting keeps each path one argument, exactly as it is: spaces, quotes, ``$(...)`` and
    backquotes in a path reach the trainer unchanged, and quotes written around a placeholder in the template
    (``--model "{model}"``) only group words. Only these exact placeholders are replaced, in one pass (a path that
    contains ``{out}`` stays as it is), so other braces (``${VAR}``) are left alone; but nothing expands them
    either, since no shell runs: environment variables reach the trainer through its environment.
    """
    values = {"{model}": str(model), "{steps}": str(int(steps)), "{out}": str(out), "{cycle}": str(int(cycle))}
    return [_PLACEHOLDER_RE.sub(lambda m: values[m.group()], w) for w in split_command(cmd_template)]


@dataclasses.dataclass
class CyclePlan:
    """One cycle of the driver: its directories and step counts (steps are cumulative after the cycle)."""

    cycle: int  # 1-based
    model: str  # {model}: the input model directory
    out: str  # {out}: the trainer's fresh output directory
    extrapolated: str  # the projection, next cycle's {model}
    argv: list[str]  # what runs (no shell)
    command: str  # the argv shell-quoted, to show and to paste
    alpha: float
    gradient_steps: int
    effective_step: int


def plan_cycles(
    cmd_template: str, model: Path, m: int, n: int, cycles: int, workdir: Path, start_step: int = 0
) -> list[CyclePlan]:
    plans = []
    cur = model
    for k in range(1, cycles + 1):
        cdir = workdir / f"cycle_{k:02d}"
        out, ext = cdir / "train", cdir / "extrapolated"
        argv = render_command(cmd_template, model=cur, steps=m, out=out, cycle=k)
        plans.append(
            CyclePlan(
                cycle=k,
                model=str(cur),
                out=str(out),
                extrapolated=str(ext),
                argv=argv,
                command=shlex.join(argv),
                alpha=(m + n) / m,
                gradient_steps=k * m,
                effective_step=start_step + k * (m + n),
            )
        )
        cur = ext
    return plans


def reground_driver(
    cmd_template: str,
    model: str | os.PathLike,
    m: int,
    n: int,
    cycles: int,
    workdir: str | os.PathLike,
    *,
    dry_run: bool = False,
    **options,
) -> dict:
    """Periodic re-grounding around any trainer command (paper §6.1 loop).

    Cycle k (1-based) runs ``cmd_template`` with ``{model}`` = the current model, ``{steps}`` = M and ``{out}`` =
    ``WORKDIR/cycle_kk/train`` (emptied first); finds the final checkpoint there (``find_checkpoint(out)`` or
    :func:`find_final_checkpoint`); writes ``W_model + ((M+N)/M)(W_ckpt − W_model)`` to
    ``WORKDIR/cycle_kk/extrapolated``, which is the next cycle's ``{model}``. The command runs without a shell: its
    words are split once and the placeholders substituted inside them (:func:`render_command`). After k cycles:
    gradient steps = k·M, effective step = ``start_step`` + k·(M+N).

    ``WORKDIR/reground_state.json`` records each finished phase ("trained", "extrapolated"); rerunning the same
    call after a kill resumes at the first unfinished phase. A saved plan that differs (cmd, model, m, n, norms,
    start_step) is an error unless ``restart=True``; ``cycles`` may grow between runs. Writes
    ``WORKDIR/reground_summary.json`` at the end and returns it. ``dry_run`` returns ``{"dry_run": True, "plan":
    [...]}`` after printing the plan, running and writing nothing. ``allow_pickle`` lets the extrapolation read
    a trained checkpoint saved as verl FSDP shards only (``global_step_M/actor/model_world_size_W_rank_R.pt``).
    ``options``: ``start_step``, ``norms``, ``find_checkpoint``, ``restart``, ``log``, ``allow_pickle``. The work dir
    is locked while the driver runs (a second driver is refused); a failed cycle leaves no empty folder behind.
    """
    if dry_run:
        return _reground(cmd_template, model, m, n, cycles, workdir, dry_run=True, **options)
    with output_folder(workdir, "reground"):  # one driver per work dir; a failed first cycle leaves no folder
        return _reground(cmd_template, model, m, n, cycles, workdir, **options)


def _reground(
    cmd_template: str,
    model: str | os.PathLike,
    m: int,
    n: int,
    cycles: int,
    workdir: str | os.PathLike,
    *,
    start_step: int = 0,
    norms: str = "copy",
    dry_run: bool = False,
    find_checkpoint: Callable[[Path], Path | tuple[Path, int | None]] | None = None,
    restart: bool = False,
    log: Callable[[str], None] | None = None,
    allow_pickle: bool = False,
) -> dict:
    from tqdm.auto import tqdm

    from ..io.checkpoints import find_model_dir
    from ..runtime.procgroup import run_group

    log = log or (lambda s: tqdm.write(s, file=sys.stderr))
    _check_mn(m, n)
    _check_choice("norms", norms, NORM_POLICIES)
    if int(cycles) < 1:
        raise RlvrLinearError(f"re-grounding: cycles must be >= 1, got {cycles}")
    if int(start_step) < 0:
        raise RlvrLinearError(f"re-grounding: start_step must be >= 0, got {start_step}")
    for ph in ("{model}", "{out}"):
        if ph not in cmd_template:
            raise RlvrLinearError(f"the trainer command must contain {ph} (placeholders: {', '.join(PLACEHOLDERS)})")
    if "{steps}" not in cmd_template:
        warnings.warn("the trainer command has no {steps}: make sure it trains exactly M steps", stacklevel=3)
    start_model = find_model_dir(model).resolve()
    workdir = Path(workdir).resolve()
    plans = plan_cycles(cmd_template, start_model, m, n, cycles, workdir, start_step)
    state_path = workdir / STATE_FILE
    plan_key = {"cmd": cmd_template, "model": str(start_model), "m": m, "n": n}
    plan_key.update(norms=norms, start_step=start_step)

    state = None
    if state_path.exists() and not restart:
        state = read_json(state_path)
        saved = state.get("plan", {})
        diff = [k for k in plan_key if saved.get(k) != plan_key[k]]
        if diff:
            details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {plan_key[k]!r}" for k in diff)
            raise RlvrLinearError(
                f"{state_path}: the saved re-grounding plan differs ({details}); "
                "use the same arguments to resume, or --restart to start over"
            )
    records: list[dict] = list(state["cycles"]) if state else []
    # keep only the consistent prefix of saved cycles
    valid = []
    for rec, p in zip(records, plans):
        if rec.get("model") != p.model or rec.get("out") != p.out:
            break
        valid.append(rec)
        if rec.get("phase") != "extrapolated":
            break
    records = valid

    if dry_run:
        rows = []
        print(f"re-grounding plan: M={m} N={n} alpha={(m + n) / m:g} cycles={cycles} workdir={workdir}")
        for p in plans:
            rec = records[p.cycle - 1] if p.cycle <= len(records) else None
            status = {"extrapolated": "done", "trained": "trained, will extrapolate"}.get(
                (rec or {}).get("phase"), "will run"
            )
            print(
                f"cycle {p.cycle}/{cycles} [{status}]: gradient steps {p.gradient_steps}, "
                f"effective step {p.effective_step}\n  $ {p.command}"
            )
            rows.append({**dataclasses.asdict(p), "status": status})
        return {"dry_run": True, "plan": rows}

    def save(extra: dict | None = None) -> None:
        done = [r for r in records if r.get("phase") == "extrapolated"]
        write_json(
            state_path,
            {
                "version": 1,
                "plan": plan_key,
                "cycles_requested": cycles,
                "cycles": records,
                "completed_cycles": len(done),
                "gradient_steps": len(done) * m,
                "effective_step": start_step + len(done) * (m + n),
                "current_model": done[-1]["extrapolated"] if done else str(start_model),
                **(extra or {}),
            },
        )

    finder = find_checkpoint or (lambda out: find_final_checkpoint(out, expected_step=m))
    bar = tqdm(plans, desc="re-grounding cycles", unit="cycle", disable=None)
    for p in bar:
        k = p.cycle
        rec = records[k - 1] if k <= len(records) else None
        if rec and rec.get("phase") == "extrapolated" and Path(rec["extrapolated"]).is_dir():
            log(f"[reground] cycle {k}/{cycles}: already done, skipping")
            continue
        del records[k - 1 :]
        if rec and rec.get("phase") == "trained" and Path(rec["checkpoint"]).is_dir():
            log(f"[reground] cycle {k}/{cycles}: already trained, extrapolating")
            records.append(rec)
        else:
            out = Path(p.out)
            if shutil.which(p.argv[0], path=os.environ.get("PATH")) is None:
                raise RlvrLinearError(
                    f"re-grounding cycle {k}/{cycles}: cannot run the trainer command: {p.argv[0]!r} is not an "
                    "executable program (the command runs without a shell; for shell syntax use --cmd 'bash -c ...')"
                )
            if out.exists():  # a fresh {out}: drop what a killed attempt left behind
                shutil.rmtree(out)
            made = make_dirs(out.parent)
            log(f"[reground] cycle {k}/{cycles}: training {m} steps from {p.model}\n  $ {p.command}")
            t0 = time.perf_counter()
            env = {**os.environ, "REGROUND_CYCLE": str(k), "REGROUND_STEPS": str(m)}
            try:
                rc = run_group(p.argv, env=env)  # no shell; its own process group, ended if we die or are interrupted
                if rc != 0:
                    how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
                    raise RlvrLinearError(f"re-grounding cycle {k}/{cycles}: the trainer command {how}: {p.command}")
                found = finder(out)
            except BaseException:
                remove_created(made)  # the cycle folder made for this attempt, unless the trainer left files in it
                raise
            ckpt, ckpt_step = found if isinstance(found, tuple) else (Path(found), None)
            rec = {
                "cycle": k,
                "phase": "trained",
                "model": p.model,
                "out": p.out,
                "command": p.command,
                "checkpoint": str(Path(ckpt).resolve()),
                "checkpoint_step": ckpt_step,
                "train_seconds": time.perf_counter() - t0,
            }
            records.append(rec)
            save()
        t0 = time.perf_counter()
        meta = {
            "reground": {
                "cycle": k,
                "m": m,
                "n": n,
                "alpha": p.alpha,
                "gradient_steps": p.gradient_steps,
                "effective_step": p.effective_step,
            }
        }
        ex = dict(alpha=p.alpha, norms=norms, metadata=meta, allow_pickle=allow_pickle)
        _extrapolate(p.model, rec["checkpoint"], p.extrapolated, **ex)
        rec.update(
            phase="extrapolated",
            extrapolated=p.extrapolated,
            alpha=p.alpha,
            gradient_steps=p.gradient_steps,
            effective_step=p.effective_step,
            extrapolate_seconds=time.perf_counter() - t0,
        )
        save()
        bar.set_postfix(grad=p.gradient_steps, effective=p.effective_step)
    bar.close()

    done = records[:cycles]
    summary = {
        "plan": plan_key,
        "cycles": len(done),
        "alpha": (m + n) / m,
        "gradient_steps": len(done) * m,
        "extrapolated_steps": len(done) * n,
        "effective_step": start_step + len(done) * (m + n),
        "final_model": done[-1]["extrapolated"],
        "history": [
            {
                "cycle": r["cycle"],
                "gradient_steps": r["gradient_steps"],
                "effective_step": r["effective_step"],
                "checkpoint": r["checkpoint"],
                "extrapolated": r["extrapolated"],
                "train_seconds": r.get("train_seconds"),
                "extrapolate_seconds": r.get("extrapolate_seconds"),
            }
            for r in done
        ],
    }
    write_json(workdir / SUMMARY_FILE, summary)
    save({"done": True})
    return summary
