"""The regime map's points, horizons and queue (every protocol choice is fixed here, before any result is seen).

Measured cost (one thread, ``--preset tiny`` base, short task, 3 to 10 steps each, 2-core machine shared with
other jobs; ``/tmp/h10b_time.py``): 0.24 s per optimizer step at 128 responses (16 prompts x 8), 1.2 s at 512
(64 x 8) and 2.4 s at 1,024 (128 x 8), i.e. time grows linearly with the responses per step.

Main grid: learning rate {1e-5, 3e-5, 1e-4, 3e-4} x responses per step {128, 512, 1024} (prompts x group size 8),
AdamW, short task (2-digit addition), seeds 0, 1, 2.

Horizons: AdamW moves each weight by about ``lr`` per step whatever the batch, so the distance travelled scales
with ``lr x H``. The protocol asks for >= 1,400 steps at 1e-5 (lr x H = 0.014); keeping ``lr x H`` equal at every rate
would leave 47 steps at 3e-4, too few for 15 checkpoints of a steady rise, so the horizon shrinks more slowly than
1/lr: H = 1400, 560, 280, 112 steps at 1e-5, 3e-5, 1e-4, 3e-4 (``lr x H`` = 0.014, 0.017, 0.028, 0.034, within a
factor 2.4), with a checkpoint every H/14 steps (100, 40, 20, 8), i.e. 15 checkpoints including step 0. The
horizon does not depend on the batch (a bigger batch lowers the gradient noise, not the step size).

Training cost: 2,352 steps per batch size per seed x (0.24 + 1.2 + 2.4) s = 2.5 h per seed, 7.5 h for 3 seeds.

Contrast points, one seed (seed 0): SGD (lr x 100, as the study's robustness stage) at every rate with 128
responses and at 3e-5 with 512 responses (~20 min); the long-response task (``arithmetic-cot``, base ``tiny-cot``)
at 3e-5 and 1e-4 with 128 responses (measured 5 s per step on the loaded machine where the short task took 0.7 s,
i.e. ~7x; their cases are the reduced set of seeds 1 and 2 because each evaluation decodes 20-54 tokens).
Re-grounding: one (M, N) per main-grid point, seed 0 only, run last (see ``analysis``).

SFT contrast (the paper's RL-vs-SFT comparison, §2a, where SFT is "clearly not linear"), seed 0: at every main-grid
point, supervised training on the reference answers from the same base with the same rate, optimizer, horizon and
save grid, one answer per prompt (batch = the RL point's prompts per step); measured for weight and log-prob R² only.
The two long-response points get the same contrast (last in the queue; SFT there imitates the whole reference
chain of thought, every partial sum, where RL is credited for the final answer only); RL and SFT then get seeds 1
and 2 at both, the cheaper 1e-4 first.

Queue order (partial results are useful): seed 0 of every main-grid point (cheapest batch first), then the contrast
points, then seeds 1 and 2 row by row (128 responses first; within a row, shortest horizon first with both its seeds,
since a sitting's unfinished run is lost with the machine: this order holds from the 1,024-response row on, the 128
and 512 rows ran seed 1 of every rate, then seed 2; after the 128 row, seeds 1 and 2 of SGD at 3e-3 x 128,
added when the 128-response row showed that AdamW reaches the study's bar only at 1e-5, whose 1,400 steps do not fit
the default study's budget), then the re-grounding runs. The re-grounding runs came
before the seeds until the first 24 items (seed 0, the contrasts and 5 re-grounding points) had run; their
checkpoints were then lost with a machine, and a re-grounding run needs its standard run's checkpoints (retrained
when missing), so the seeds, which the main grid's verdicts need, go first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..training.optimizers import SGD_LR_FACTOR

LRS = (1e-5, 3e-5, 1e-4, 3e-4)
RESPONSES = (128, 512, 1024)
GROUP = 8
SEEDS = (0, 1, 2)
#: learning rate -> horizon (steps); a checkpoint every H/14 steps
HORIZON = {1e-5: 1400, 3e-5: 560, 1e-4: 280, 3e-4: 112}
N_SAVES = 14

#: the --quick map: 2 x 2 points of the quick base (64 wide, 2 layers), pico horizons, one seed
QUICK_LRS = (3e-4, 1e-3)
QUICK_RESPONSES = (16, 32)
QUICK_HORIZON = 16
QUICK_SAVE_EVERY = 2


@dataclass(frozen=True)
class Point:
    """One point of the map: a training setting (without the seed)."""

    lr: float
    responses: int
    horizon: int
    save_every: int
    task: str = "arithmetic"
    model: str = "tiny"
    optimizer: str = "adamw"
    group: int = GROUP
    method: str = "rl"  #: ``rl`` (GRPO) or ``sft`` (the paper's contrast: supervised on the reference answers)

    @property
    def prompts(self) -> int:
        return self.responses // self.group

    @property
    def kind(self) -> str:
        """``main`` (lr x responses grid), ``sgd``, ``cot`` or ``sft`` (contrast points)."""
        if self.method == "sft":
            return "sft"
        if self.optimizer == "sgd":
            return "sgd"
        if self.task != "arithmetic":
            return "cot"
        return "main"

    @property
    def name(self) -> str:
        """``lr1e-5_r128`` (main grid), ``.._sgd`` / ``.._cot`` (contrasts); an SFT point is its RL twin's name +
        ``_sft`` (``lr3e-5_r128_sft``, ``lr3e-5_r128_cot_sft``)."""
        if self.method == "sft":
            return replace(self, method="rl").name + "_sft"
        extra = "" if self.kind == "main" else f"_{self.kind}"
        return f"lr{self.lr:.0e}_r{self.responses}{extra}".replace("e-0", "e-")

    def run_name(self, seed: int) -> str:
        return f"{self.name}_s{seed}"

    def train_config(self, seed: int, model: str | None = None, threads: int | None = 1, eval_problems: int = 200):
        """The run's config: :class:`TrainConfig` (RL) or, for an SFT point, :class:`SFTConfig` with one reference
        answer per prompt (``batch_size`` = the RL point's prompts per step), the same rate, optimizer and grid."""
        if self.method == "sft":
            from ..training.sft import SFTConfig

            return SFTConfig(
                model=model or self.model, task=self.task, steps=self.horizon, save_every=self.save_every,
                learning_rate=self.lr, optimizer=self.optimizer, batch_size=self.prompts, seed=seed,
                eval_problems=eval_problems, threads=threads,
            )  # fmt: skip
        from ..training.grpo import TrainConfig

        return TrainConfig(
            model=model or self.model,
            task=self.task,
            steps=self.horizon,
            save_every=self.save_every,
            learning_rate=self.lr,
            optimizer=self.optimizer,
            prompts_per_step=self.prompts,
            samples_per_prompt=self.group,
            seed=seed,
            threads=threads,
            eval_problems=eval_problems,
        )


@dataclass(frozen=True)
class Item:
    """One queue entry: train (and analyse) ``point`` with ``seed``; ``full`` = every analysis case."""

    point: Point
    seed: int
    full: bool
    reground: bool = False

    @property
    def run_name(self) -> str:
        return self.point.run_name(self.seed) + ("_reground" if self.reground else "")


def main_point(lr: float, responses: int) -> Point:
    h = HORIZON[lr]
    return Point(lr=lr, responses=responses, horizon=h, save_every=h // N_SAVES)


def main_grid() -> list[Point]:
    return [main_point(lr, r) for r in RESPONSES for lr in LRS]


def contrast_points() -> list[Point]:
    sgd = [
        Point(lr=lr * SGD_LR_FACTOR, responses=128, horizon=HORIZON[lr], save_every=HORIZON[lr] // N_SAVES,
              optimizer="sgd")
        for lr in LRS
    ]  # fmt: skip
    sgd.append(Point(lr=3e-5 * SGD_LR_FACTOR, responses=512, horizon=560, save_every=40, optimizer="sgd"))
    cot = [
        Point(lr=lr, responses=128, horizon=HORIZON[lr], save_every=HORIZON[lr] // N_SAVES, task="arithmetic-cot",
              model="tiny-cot")
        for lr in (3e-5, 1e-4)
    ]  # fmt: skip
    return sgd + cot


def sft_points(points: list[Point]) -> list[Point]:
    """The SFT contrast of each point: the same base, task, rate, optimizer, horizon and save grid, supervised."""
    return [replace(p, method="sft") for p in points]


def quick_grid() -> list[Point]:
    return [
        Point(lr=lr, responses=r, horizon=QUICK_HORIZON, save_every=QUICK_SAVE_EVERY, group=4)
        for r in QUICK_RESPONSES
        for lr in QUICK_LRS
    ]


def queue(quick: bool = False, cot_available: bool = True) -> list[Item]:
    """The map's work list in run order (see the module docstring)."""
    if quick:
        pts = quick_grid()
        items = [Item(p, 0, full=i == 0) for i, p in enumerate(pts)]
        items += [Item(p, 0, full=False) for p in sft_points(pts[:1])]
        return items + [Item(pts[0], 0, full=True, reground=True)]
    grid = main_grid()
    items = [Item(p, 0, full=True) for p in grid]
    # long responses cost ~7x per step and far more per evaluation: the reduced case set there
    items += [Item(p, 0, full=p.kind != "cot") for p in contrast_points() if cot_available or p.kind != "cot"]
    # seeds 1 and 2 row by row (cheapest batch first), so each row has its 3 seeds before the next row starts; within
    # a row the cheapest point (shortest horizon) first, with both its seeds, so that a sitting that ends mid-row
    # leaves whole points with 3 seeds
    seeds = [
        Item(p, s, full=False)
        for r in RESPONSES
        for p in sorted((p for p in grid if p.responses == r), key=lambda p: p.horizon)
        for s in SEEDS[1:]
    ]
    # SGD at 3e-3 x 128 (the study's 560-step horizon) with 3 seeds: the one point found so far that might carry
    # the default study's linearity bar within its 30-minute budget (AdamW reaches the bar at 1e-5, 1,400 steps)
    sgd = [p for p in contrast_points() if p.optimizer == "sgd" and p.responses == 128 and p.horizon == 560]
    # the SFT contrast of every main-grid point, seed 0 (added 2026-12-02, after the 512 row's seeds: an SFT step
    # costs about 1/7 of an RL step at 128 responses, so the 12 runs take ~20 minutes)
    sft = [Item(p, 0, full=False) for p in sft_points(grid)]
    items += seeds[:8] + [Item(p, s, full=False) for p in sgd for s in SEEDS[1:]] + seeds[8:16] + sft + seeds[16:]
    items += [Item(p, 0, full=True, reground=True) for p in grid]
    # the SFT contrast of the long-response points, seed 0 (added 2026-12-02, last: the short task's 12 contrasts
    # found RL and SFT equally linear, and the paper's mechanism, sparse final-answer credit against dense token-level
    # supervision, differs most where responses are long; reported whatever it shows)
    cot = [p for p in contrast_points() if p.kind == "cot"] if cot_available else []
    items += [Item(p, 0, full=False) for p in sft_points(cot)]
    # seeds 1 and 2 of RL and SFT at both long-response points, the cheaper one (1e-4: half the 3e-5 horizon) first,
    # added when seed 0 of both showed SFT more linear than RL
    for p in cot[::-1]:
        items += [Item(q, s, full=False) for q in (p, *sft_points([p])) for s in SEEDS[1:]]
    return items
