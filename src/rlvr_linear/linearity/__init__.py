"""Trajectory linearity: how straight do weights, token log-probs and activations move across checkpoints?

One *row* is the trajectory ``y_1 .. y_T`` of one scalar (a weight, the log-prob of one response token, one
activation) at training steps ``x_1 .. x_T``. With ``x̄, ȳ`` the means,

    S_xx = Σ (x_t - x̄)²,   S_yy = Σ (y_t - ȳ)²,   S_xy = Σ (x_t - x̄)(y_t - ȳ)
    slope b = S_xy / S_xx,  intercept a = ȳ - b x̄
    R² = S_xy² / (S_xx S_yy)      (squared Pearson r = coefficient of determination of the OLS line)

computed in float64 and clamped to [0, 1]. A constant row (max == min) has no defined R²; it gets R² = 0 and
is flagged. Rescaling the steps does not change R².

**Null baseline.** A high R² is only meaningful next to what noise alone gives: a driftless random walk of
T = 14 points has median R² ≈ 0.45 and ≈ 27% of its rows above 0.7. For every kept row we build a null
trajectory with the same start and the same step sizes but random signs (drift removed):

    y⁰_1 = y_1,   y⁰_t = y_1 + Σ_{s<t} ε_s (y_{s+1} - y_s),   ε_s = ±1 fair coin flips

and report its R² next to the observed one. The coin flips come from a counter-based hash of
``(seed, tensor name, flat index)``, so a row gets the same null whatever the chunking or sampling. The
per-row drift-to-noise ratio ``|y_T - y_1| / sqrt(Σ (y_{t+1} - y_t)²)`` is ``sqrt(T - 1)`` for a straight line
with equal steps and ≈ 0.7 (median) for a random walk.

Analyses (each streams tensors, never whole checkpoints, and returns a result object with ``to_json()`` and
``save(out_dir)``): :func:`analyze_weights`, :func:`analyze_logprobs`, :func:`analyze_activations`,
:func:`forecast`. Paper reference: arXiv 2601.04537 §1 (sampling 0.1% per tensor, ≥ 50 per tensor, seed 42,
filters ``range > 1e-4`` in bf16 and ``≥ 4 distinct values``; log-prob positions with ``|Δ| > 0.2``).

A *trajectory sketch* (:mod:`.sketch`; :func:`write_sketch`, ``rlvr-linear sketch``) keeps the paper sample and the
probes' log-probs of every checkpoint in a small folder; :func:`open_run` opens it as a trajectory that
:func:`analyze_weights` (paper mode) and :func:`analyze_logprobs` read with the same numbers as the checkpoints.

May import: ``errors``, ``runtime``, ``io``, ``evaluation``, ``reporting``.
"""


# The package: one concept per module (see each module's docstring). This module re-exports the public names, and
# the few private helpers that callers and tests import from here (marked noqa F401), so that
# ``from rlvr_linear.linearity import analyze_weights`` (and the rest) keep working. The switches ``USE_NUMBA``
# (kernel), ``_TILE`` (kernel) and ``SPAN_READS`` (reader) are read from their own modules: set them there.

from __future__ import annotations

from .activations import (
    ActivationLinearity,
    analyze_activations,
    collect_activations,
)
from .forecast import (
    ForecastResult,
    forecast,
    split_fit,
)
from .kernel import (  # noqa: F401
    HAVE_NUMBA,
    TENSOR_CSV_COLUMNS,
    USE_NUMBA,
    TensorStats,
    _analyze_block,
    _analyze_fused,
    _analyze_tiled,
    fused_kernel,
    null_sample,
    tracking_proto,
)
from .logprobs import (
    LogprobLinearity,
    analyze_logprobs,
)
from .passes import (
    NULL_FRACTION_ALL,
    NULL_MIN,
    WORKERS_MIN_PARAMS,
    _segments,  # noqa: F401
)
from .probes import (
    Probe,
    _as_probes,  # noqa: F401
    encode_probes,
    make_probes,
    read_probes,
    score_logprobs,
    score_trajectory,
    write_probes,
)
from .reader import (  # noqa: F401
    SPAN_READS,
    _BlockLoader,
    _check_finite,
    _Job,
    _row_chunks,
    _RowSource,
    _span_readable,
    has_nonfinite,
)
from .sampling import (
    default_min_abs_change,
    float_keys,
    paper_sample_size,
    parse_param_name,
    sample_indices,
    tensor_seed,
    weight_keys,
)
from .sketch import (
    Sketch,
    SketchTrajectory,
    open_run,
)
from .sketch_writer import write_sketch
from .stats import (
    EXTRA_ROWS,
    MAX_POSITIONS,
    MIN_ABS_CHANGE_BF16,
    MIN_LOGPROB_CHANGE,
    MIN_UNIQUE,
    MODULE_COLUMNS,
    PAPER_FRACTION,
    PAPER_MIN_SAMPLES,
    PAPER_SEED,
    THRESHOLD,
    Dist,
    LinearFit,
    _check_steps,  # noqa: F401
    drift_to_noise,
    has_unique,
    linear_fit,
    n_unique,
    null_signs,
    r2_score,
    sign_flip_null,
    stable_key,
)
from .weights import (
    WeightLinearity,
    analyze_weights,
)

__all__ = [
    "ActivationLinearity",
    "Dist",
    "EXTRA_ROWS",
    "ForecastResult",
    "HAVE_NUMBA",
    "LinearFit",
    "LogprobLinearity",
    "MAX_POSITIONS",
    "MIN_ABS_CHANGE_BF16",
    "MIN_LOGPROB_CHANGE",
    "MIN_UNIQUE",
    "MODULE_COLUMNS",
    "NULL_FRACTION_ALL",
    "NULL_MIN",
    "PAPER_FRACTION",
    "PAPER_MIN_SAMPLES",
    "PAPER_SEED",
    "Probe",
    "SPAN_READS",
    "Sketch",
    "SketchTrajectory",
    "TENSOR_CSV_COLUMNS",
    "THRESHOLD",
    "TensorStats",
    "USE_NUMBA",
    "WORKERS_MIN_PARAMS",
    "WeightLinearity",
    "analyze_activations",
    "analyze_logprobs",
    "analyze_weights",
    "collect_activations",
    "default_min_abs_change",
    "drift_to_noise",
    "encode_probes",
    "float_keys",
    "forecast",
    "fused_kernel",
    "has_nonfinite",
    "has_unique",
    "linear_fit",
    "make_probes",
    "n_unique",
    "null_sample",
    "null_signs",
    "open_run",
    "paper_sample_size",
    "parse_param_name",
    "r2_score",
    "read_probes",
    "sample_indices",
    "score_logprobs",
    "score_trajectory",
    "sign_flip_null",
    "split_fit",
    "stable_key",
    "tensor_seed",
    "tracking_proto",
    "weight_keys",
    "write_probes",
    "write_sketch",
]
