"""The SmolLM2-135M experiment of docs/smollm2.md: one seed per study, its evidence copied into small committed files,
and the summary over seeds computed from those files alone (no checkpoint needed).

    OMP_NUM_THREADS=1 rlvr-linear study --model smollm2-135m --seeds 0 -o out/smol-seed0   # one seed
    python experiments/smollm2.py collect out/smol-seed0     # -> experiments/results/smollm2/seed0/
    python experiments/smollm2.py summary                    # -> experiments/results/smollm2/summary.json

The timed run: the plain command on an otherwise idle machine, under GNU time, collected apart from the seeds
(``timed-seed0/``, with ``end_to_end.json``: the command's wall and CPU time) and shown beside them, not averaged in:

    /usr/bin/time -v -o out/smol-timed.time rlvr-linear study --model smollm2-135m --seeds 0 -o out/smol-timed
    python experiments/smollm2.py collect out/smol-timed --timed out/smol-timed.time

``collect`` copies, per seed of the study: the trajectory analysis (``trajectory.json``, the case records, the
per-problem scores ``scores.npz`` and the figures), the run's ``manifest.json``, ``config.yaml`` and ``metrics.jsonl``,
the study's stage times, and the run's trajectory sketch unless an identical one is committed already (seed 0's lives
in ``s4_seed0/sketch``). Checkpoints are never copied.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io import copy_file, jsonable, read_json, write_json

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "smollm2"
#: a sketch committed before this script existed, under the results folder (the same run: collect checks it is
#: identical instead of copying it again)
EARLIER_SKETCHES = {0: Path("s4_seed0") / "sketch"}


def _same_tree(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and not p.name.startswith("."))
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and not p.name.startswith("."))
    return fa == fb and all((a / f).read_bytes() == (b / f).read_bytes() for f in fa)


#: the folder prefix of a timed run's evidence (``timed-seed0``): beside the seeds, not in their summary
TIMED = "timed-"


def gnu_time(path: Path) -> dict:
    """The wall and CPU seconds and peak memory that ``/usr/bin/time -v`` wrote to ``path``."""
    fields = {}
    for line in Path(path).read_text().splitlines():
        key, sep, value = line.strip().rpartition(": ")
        if sep:
            fields[key] = value.strip()
    try:
        clock = [float(x) for x in fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":")]
        out = {
            "command": fields["Command being timed"].strip('"'),
            "wall_s": round(sum(v * 60**i for i, v in enumerate(reversed(clock))), 1),
            "user_s": float(fields["User time (seconds)"]),
            "system_s": float(fields["System time (seconds)"]),
            "max_rss_mb": round(int(fields["Maximum resident set size (kbytes)"]) / 1024),
            "exit_status": int(fields["Exit status"]),
        }
    except (KeyError, ValueError):
        raise RlvrLinearError(f"{path}: not the output of /usr/bin/time -v") from None
    out["cpu_per_wall"] = round((out["user_s"] + out["system_s"]) / out["wall_s"], 2)
    return out


def collect(study: Path, dest: Path = RESULTS, timed: Path | None = None) -> list[Path]:
    """Copy each seed's evidence of the study folder ``study`` into ``dest/seed<N>`` (with ``timed``, the study's
    ``/usr/bin/time -v`` output: into ``dest/timed-seed<N>``, with ``end_to_end.json``); returns the folders."""
    from rlvr_linear.regime.trajectory import copy_results

    cfg = read_json(study / "study_config.json")
    timings = read_json(study / "timings.json") if (study / "timings.json").exists() else {}
    wall = gnu_time(timed) if timed is not None else None
    if wall is not None and wall["exit_status"] != 0:
        raise RlvrLinearError(f"{timed}: the timed command exited with {wall['exit_status']}")
    out = []
    for seed in cfg["seeds"]:
        folder = f"{TIMED if wall else ''}seed{seed}"
        run, ana, d = study / "runs" / f"rl_seed{seed}", study / "trajectory" / f"seed{seed}", dest / folder
        copy_results(ana, d)
        for name in ("manifest.json", "config.yaml", "metrics.jsonl"):
            copy_file(run / name, d / name)
        write_json(d / "study_timings.json", {"study": str(study), "timings_s": timings,
                                              "train_wall_s": read_json(run / "manifest.json").get("wall_time")})
        if wall is not None:
            write_json(d / "end_to_end.json", {**wall, "seeds": cfg["seeds"]})
        sketch, earlier = run / "sketch", None if wall else EARLIER_SKETCHES.get(seed)
        earlier = None if earlier is None else dest / earlier
        if sketch.is_dir():
            if earlier is not None and earlier.is_dir():
                if not _same_tree(sketch, earlier):
                    raise RlvrLinearError(f"{sketch} differs from the committed {earlier}: another run?")
            else:
                shutil.rmtree(d / "sketch", ignore_errors=True)
                shutil.copytree(sketch, d / "sketch", ignore=shutil.ignore_patterns(".*"))
        out.append(d)
    return out


def summary(dest: Path = RESULTS) -> dict:
    """``summary.json`` over every committed ``seed<N>/trajectory.json``; the timed runs (``timed-seed<N>``) as their
    own rows (``numbers.timed``), end to end as GNU time measured it."""
    from rlvr_linear.regime import summarize

    paths = sorted(dest.glob("seed*/trajectory.json"), key=lambda p: int(p.parent.name[4:]))
    res = summarize(paths, rel_to=dest)
    for row in res["numbers"]["per_seed"]:  # training (the run's wall time) + its analysis (recorded compute)
        row["end_to_end_s"] = round((row["train_wall_s"] or 0.0) + row["analysis_s_total"], 1)
    timed = sorted(dest.glob(f"{TIMED}seed*/trajectory.json"))
    if timed:
        res["numbers"]["timed"] = summarize(timed, rel_to=dest)["numbers"]["per_seed"]
        for row, p in zip(res["numbers"]["timed"], timed, strict=True):
            row["seed"] = int(p.parent.name.removeprefix(f"{TIMED}seed"))
            row["timed"] = read_json(p.parent / "end_to_end.json")
            row["end_to_end_s"] = row["timed"]["wall_s"]
    write_json(dest / "summary.json", jsonable(res))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="copy a study's per-seed evidence into the results folder")
    c.add_argument("study", type=Path, help="the output folder of `rlvr-linear study --model smollm2-135m`")
    c.add_argument("--dest", type=Path, default=RESULTS)
    c.add_argument("--timed", type=Path, help="the study's /usr/bin/time -v output: collect it as a timed run")
    s = sub.add_parser("summary", help="the summary over the committed seeds")
    s.add_argument("--dest", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "collect":
            for d in collect(args.study, args.dest, args.timed):
                print(d)
        else:
            res = summary(args.dest)
            print(f"{args.dest / 'summary.json'}: {res['verdict']}")
    except RlvrLinearError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
