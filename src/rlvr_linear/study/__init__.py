"""The study: one command that reproduces the paper's findings in miniature (see docs/study.md).

``run_study(cfg, out)`` runs these stages in order; each writes ``OUT/<stage>/result.json`` atomically when it is
done, and a rerun skips finished stages and reuses their results (sub-runs are reused too):

    baseline              RL runs with checkpoints, one per seed                          (trajectories)
    linearity             weight / token log-prob R² with nulls (seed 0), RL vs SFT, forecast   (paper §1, §2a)
    robustness            GRPO / GSPO / Dr.GRPO, AdamW / SGD, two lrs, two group sizes     (paper Fig. 2)
    mechanism             SFT with token-level random-sign noise vs SNR                    (paper Fig. 3)
    weight_extrapolation  W_0 + α (W_t1 − W_0) vs the real RL checkpoint at the target     (paper Fig. 5)
    logit_extrapolation   logit-extrapolated decoding vs the last RL checkpoint (avg@k)    (paper Table 1)
    regrounding           M RL steps + N-step jumps vs standard RL: steps to thresholds, fixed budgets (Fig. 6, Tab. 2)
    report                OUT/report.html and OUT/results.json                   (rlvr_linear.reporting.report)

Every protocol choice (thresholds, t1 values, α, (M, N) grid, verdict rules) is fixed in code before any result is
seen: the protocol in :mod:`.config`, the paper's numbers in :mod:`.paper`, the shared helpers and run cache in
:mod:`.common`, one module per stage holding the stage and its verdict rule (the ``_verdict_*`` functions,
documented in docs/study.md), the time estimate in :mod:`.plan` and the driver in :mod:`.run`.

Built on the same protocol and helpers, imported by name: :mod:`.tables` (the README's result tables, rendered
from the results files), :mod:`.advisor_cases` (the weight-extrapolation stage re-scored as labelled cases for
``rlvr-linear advise --validate``) and :mod:`.adaptive_regrounding` (``--reground M,auto`` against standard RL and
fixed (M, N)). The regime map (``--stages regime``) sits above the study and runs from the command line.

This package re-exports the names the rest of the code base (CLI, regime map, experiments, tests) imports from
``rlvr_linear.study``, so ``from rlvr_linear.study import X`` works for all of them.

May import: ``errors``, ``runtime``, ``io``, ``evaluation``, ``reporting``, ``models``, ``linearity``,
``extrapolation``, ``advisor``, ``training``.
"""

from ..io import jsonable, read_json, write_json
from .baseline import stage_baseline
from .common import (
    _ci,
    _Ctx,
    _eval_greedy,
    _mean_numbers,
    _num,
    _probes,
    _r2_numbers,
    _weight_analysis,
    active_weighted,
    ckpt,
    first_reach,
    same_config,
    snap,
)
from .config import (
    CONTRAST_SETTINGS,
    MODES,
    QUICK_BASE_RECIPE,
    ROBUSTNESS_SETTINGS,
    SGD_LR_FACTOR,
    StudyConfig,
)
from .linearity import PAPER_MARGIN, PAPER_REGIME, _verdict_linearity, paper_regime, stage_linearity
from .logit_extrapolation import _verdict_logit, stage_logit_extrapolation
from .mechanism import _verdict_mechanism, stage_mechanism
from .paper import PAPER
from .plan import plan, print_plan
from .regrounding import _verdict_regrounding, stage_regrounding
from .robustness import _verdict_robustness, stage_robustness
from .run import (
    NEEDS_BASELINE,
    OPT_IN_STAGES,
    STAGE_FUNCS,
    STAGES,
    _check_config,
    machine_info,
    parse_stages,
    run_study,
    stage_done,
)
from .weight_extrapolation import _verdict_wx, stage_weight_extrapolation, wx_targets

__all__ = [
    "CONTRAST_SETTINGS",
    "MODES",
    "NEEDS_BASELINE",
    "OPT_IN_STAGES",
    "PAPER",
    "PAPER_MARGIN",
    "PAPER_REGIME",
    "QUICK_BASE_RECIPE",
    "ROBUSTNESS_SETTINGS",
    "SGD_LR_FACTOR",
    "STAGES",
    "STAGE_FUNCS",
    "StudyConfig",
    "_Ctx",
    "_check_config",
    "_ci",
    "_eval_greedy",
    "_mean_numbers",
    "_num",
    "_probes",
    "_r2_numbers",
    "_verdict_linearity",
    "_verdict_logit",
    "_verdict_mechanism",
    "_verdict_regrounding",
    "_verdict_robustness",
    "_verdict_wx",
    "_weight_analysis",
    "active_weighted",
    "ckpt",
    "first_reach",
    "jsonable",
    "machine_info",
    "paper_regime",
    "parse_stages",
    "plan",
    "print_plan",
    "read_json",
    "run_study",
    "same_config",
    "snap",
    "stage_baseline",
    "stage_done",
    "stage_linearity",
    "stage_logit_extrapolation",
    "stage_mechanism",
    "stage_regrounding",
    "stage_robustness",
    "stage_weight_extrapolation",
    "wx_targets",
    "write_json",
]
