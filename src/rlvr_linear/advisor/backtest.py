"""Backtesting linear predictors against "no change": the error ratio as a function of horizon, and h*.

A *series* is a set of scalars observed at checkpoint steps ``x_0 < ... < x_{T-1}``: sampled weights, teacher-forced
token log-probs, or a run's reward / validation curve, held as :class:`Block` arrays of shape (T, n). For every
*origin* ``o`` (the checkpoint a user would extrapolate from) and every later checkpoint ``j``, a predictor is fitted
on checkpoints ``<= o`` only and predicts ``Y_j``; the naive predictor is ``Y_o`` ("no change"):

    predictors (coefficient rules from :mod:`rlvr_linear.extrapolation.rules`, not rewritten here)
      two_point   Y_b + α (Y_o − Y_b), α = alpha_from_steps(x_b, x_o, x_j), b = the base checkpoint (default the first)
      lsq_last_k  least-squares line over the k newest checkpoints <= o (least_squares_weights)
      lsq_all     least-squares line over every checkpoint b..o
      rank1       RELEX-style rank-1 over checkpoints b..o (rank_r_weights on D Dᵀ, D = [Y_i − Y_b]); a block that is
                  not a matrix (1-D tensors, curves) uses the least-squares line, as extrapolate_fit does

    relative horizon ρ = (x_j − x_o) / (x_o − x_first of the fit window)     (two_point: ρ = α − 1)
    error ratio(bin) = sqrt( Σ (pred − Y_j)² / Σ (Y_o − Y_j)² ), sums over all (o, j) pairs whose ρ is in the bin
                       and over all scalars of the series                   (< 1: the line beats "no change")

**Confidence.** Each bin's ratio gets a one-sided 95% upper bound from a Poisson bootstrap over the *scalars*
(parameters / tokens; 200 resamples, seeded): the per-scalar sums over origins are re-weighted, so the bound covers
which parameters were sampled, not which stretch of training was seen. A series of one scalar (a curve) has no
bootstrap; its bound is the point estimate. **h*** walks the non-empty ρ bins from the shortest: ρ* is the largest
observed ρ of the last bin before the first one whose bound is >= 1 (0 if the first fails); in steps at the newest
checkpoint, h* = ρ* × the predictor's current fit span (two_point, rank1: x_last − x_b; lsq_last_k: the last k).
Horizons are relative because a line fitted over a span S is tested at jumps proportional to S (the paper's α),
which lets a run with checkpoints every 20 steps vouch for a 100-step jump from step 100 (α = 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import RlvrLinearError
from ..extrapolation.rules import alpha_from_steps, least_squares_weights, rank_r_weights

PREDICTORS = ("two_point", "lsq_last_k", "rank1")
#: also available: least squares over every checkpoint from the base (the regime map's "lsq" cases)
EXTRA_PREDICTORS = ("lsq_all",)
ALIASES = {"lsq": "lsq_last_k", "two-point": "two_point", "rank-1": "rank1", "lsq_last": "lsq_last_k"}
#: relative-horizon bin edges, bins are (lo, hi]
RHO_EDGES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, math.inf)
N_BOOT = 200
CONFIDENCE = 0.95
CONFIDENCE_TEXT = (
    "one-sided 95% upper bound of the pooled error ratio, Poisson bootstrap over the sampled scalars "
    "(200 resamples); a one-scalar series (a curve) uses its point estimate"
)


def canonical(predictor: str) -> str:
    p = ALIASES.get(predictor, predictor)
    if p not in PREDICTORS + EXTRA_PREDICTORS:
        raise RlvrLinearError(f"unknown predictor {predictor!r}; choose from {', '.join(PREDICTORS)} (or 'lsq')")
    return p


@dataclass
class Block:
    """One group of scalars of a series: ``values`` (T, n) float64, time along axis 0."""

    name: str
    values: np.ndarray
    low_rank: bool = True  #: rank-1 applies (a matrix's sampled entries); False: use the line


def window(predictor: str, o: int, base: int = 0, k: int = 4) -> list[int] | None:
    """Checkpoint indices the predictor fits at origin ``o`` (None if it cannot fit there)."""
    if predictor == "two_point":
        return [base, o] if o > base else None
    if predictor == "lsq_last_k":
        lo = o - k + 1
        return list(range(lo, o + 1)) if lo >= base and k >= 2 else None
    if predictor in ("rank1", "lsq_all"):
        return list(range(base, o + 1)) if o - base >= 2 else None
    raise RlvrLinearError(f"unknown predictor {predictor!r}")


def coefficients(
    predictor: str, x: np.ndarray, idx: list[int], target: float, block: Block | None = None
) -> np.ndarray:
    """``c`` with ``prediction = c @ Y[idx]`` at step ``target``."""
    if predictor == "two_point":
        a = alpha_from_steps(x[idx[0]], x[idx[1]], target)
        return np.array([1.0 - a, a])
    w = least_squares_weights(x[idx], target)
    if predictor == "rank1" and block is not None and _low_rank(block):
        return _rank1_coefficients(rank1_projector(block, idx), w)
    return w


def _low_rank(block: Block) -> bool:
    return block.low_rank and block.values.shape[1] > 1


def rank1_projector(block: Block, idx: list[int]) -> np.ndarray:
    """``P`` with ``rank_r_weights(G, w, 1)[0] == P @ w`` for the window's Gram matrix (it is linear in ``w``)."""
    d = block.values[idx] - block.values[idx[0]]
    return rank_r_weights(d @ d.T, np.eye(len(idx)), 1)[0]


def _rank1_coefficients(proj: np.ndarray, w: np.ndarray) -> np.ndarray:
    beta = proj @ w
    c = beta.copy()
    c[0] = 1.0 - beta[1:].sum()  # Y_b + Σ β_i (Y_i − Y_b)
    return c


@dataclass
class Backtest:
    """Result of :func:`backtest` for one predictor on one series."""

    predictor: str
    rows: list[dict]  #: per non-empty ρ bin: rho_lo, rho_hi, rho_max, pairs, horizon_steps, ratio, upper
    rho_star: float
    h_star: float  #: steps, at the newest checkpoint
    span: float  #: the predictor's fit span at the newest checkpoint (steps)
    pairs: list[dict] = field(default_factory=list)  #: per (origin, target): ratio over all scalars
    note: str = ""

    def row_at(self, rho: float) -> dict | None:
        for r in self.rows:
            if r["rho_lo"] < rho <= r["rho_hi"]:
                return r
        return None

    def h_star_below(self, bound: float) -> float:
        """h* (steps) with the bound threshold ``bound`` instead of 1: the calibrated safe horizon of
        :mod:`.calibrate` uses a threshold below 1."""
        return rho_star_of(self.rows, bound) * self.span

    def ratio_at(self, rho: float) -> float | None:
        """The bin ratio at relative horizon ``rho``; beyond the last bin, that bin's (None if no bins)."""
        r = self.row_at(rho)
        if r is None and self.rows and rho > self.rows[-1]["rho_hi"]:
            r = self.rows[-1]
        return None if r is None else r["ratio"]

    def to_json(self) -> dict:
        return {
            "predictor": self.predictor,
            "rho_star": self.rho_star,
            "h_star_steps": self.h_star,
            "span_steps": self.span,
            "bins": self.rows,
            "pairs": self.pairs,
            "note": self.note,
        }


def rho_star_of(rows: list[dict], bound: float = 1.0) -> float:
    """The largest observed ρ of the last bin before the first whose upper bound is >= ``bound`` (0 if the first
    fails); ``rows`` as :attr:`Backtest.rows` (at least ``rho_max`` and ``upper``), shortest bin first."""
    rho_star = 0.0
    for r in rows:
        if not (r["upper"] < bound):
            break
        rho_star = r["rho_max"]
    return rho_star


def _uppers(E: np.ndarray, V: np.ndarray, seed: int, n_boot: int, confidence: float) -> np.ndarray:
    """Per bin (rows of E, V): the ``confidence`` quantile of sqrt(Σ w E / Σ w V) over Poisson(1) weights ``w``
    on the scalars (one weight draw shared by all bins)."""
    nb, n = E.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sqrt(E.sum(1) / V.sum(1))
    ratio = np.where(np.isfinite(ratio), ratio, np.inf)
    if n < 2 or n_boot < 1:
        return ratio
    rng = np.random.default_rng(seed)
    out = []
    chunk = max(1, min(n_boot, (1 << 22) // n))
    for s in range(0, n_boot, chunk):
        w = rng.poisson(1.0, size=(min(chunk, n_boot - s), n)).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.sqrt((w @ E.T) / (w @ V.T)))
    r = np.concatenate(out)
    r = np.where(np.isfinite(r), r, np.inf)
    return np.where(np.isfinite(ratio), np.quantile(r, confidence, axis=0), np.inf)


def backtest(
    steps,
    blocks: list[Block],
    predictor: str,
    *,
    base: int = 0,
    k: int = 4,
    edges=RHO_EDGES,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Backtest:
    """Backtest ``predictor`` on the series (see the module docstring); ``base`` = index of the two-point base."""
    predictor = canonical(predictor)
    x = np.asarray(steps, dtype=np.float64)
    T = x.shape[0]
    if not blocks:
        raise RlvrLinearError("nothing to backtest: no scalars in the series")
    for b in blocks:
        if b.values.ndim != 2 or b.values.shape[0] != T:
            raise RlvrLinearError(f"{b.name}: values of shape {b.values.shape} do not match {T} checkpoints")
    widths = [b.values.shape[1] for b in blocks]
    offs = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    y_all = np.concatenate([b.values for b in blocks], axis=1)
    low = [bi for bi, b in enumerate(blocks) if predictor == "rank1" and _low_rank(b)]
    nb = len(edges) - 1
    E = np.zeros((nb, int(offs[-1])))
    V = np.zeros_like(E)
    rhos: list[list[float]] = [[] for _ in range(nb)]
    hs: list[list[float]] = [[] for _ in range(nb)]
    pairs = []
    for o in range(base + 1, T - 1):
        idx = window(predictor, o, base, k)
        if idx is None:
            continue
        span = x[o] - x[idx[0]]
        projs = {bi: rank1_projector(blocks[bi], idx) for bi in low}
        for j in range(o + 1, T):
            rho = (x[j] - x[o]) / span
            b = int(np.searchsorted(edges, rho, side="left")) - 1
            c = coefficients(predictor, x, idx, x[j])  # the line (rank-1 blocks are redone below)
            pred = c @ y_all[idx]
            for bi in low:
                a, z = offs[bi], offs[bi + 1]
                pred[a:z] = _rank1_coefficients(projs[bi], c) @ y_all[idx, a:z]
            err = (pred - y_all[j]) ** 2
            nv = (y_all[o] - y_all[j]) ** 2
            E[b] += err
            V[b] += nv
            e_tot, v_tot = float(err.sum()), float(nv.sum())
            rhos[b].append(float(rho))
            hs[b].append(float(x[j] - x[o]))
            pairs.append(
                {"origin": float(x[o]), "target": float(x[j]), "rho": float(rho),
                 "ratio": math.sqrt(e_tot / v_tot) if v_tot > 0 else math.inf}
            )  # fmt: skip
    used = [b for b in range(nb) if rhos[b]]
    ups = _uppers(E[used], V[used], seed, n_boot, confidence) if used else []
    rows = []
    for b, up in zip(used, ups):
        e, v = E[b], V[b]
        ratio = math.sqrt(e.sum() / v.sum()) if v.sum() > 0 else math.inf
        rows.append(
            {
                "rho_lo": float(edges[b]),
                "rho_hi": float(edges[b + 1]),
                "rho_max": max(rhos[b]),
                "pairs": len(rhos[b]),
                "horizon_steps": float(np.mean(hs[b])),
                "ratio": ratio,
                "upper": float(up),
            }
        )
    rho_star = rho_star_of(rows, 1.0)
    last = window(predictor, T - 1, base, k)
    span = float(x[-1] - x[last[0]]) if last else 0.0
    note = "" if rows else f"too few checkpoints to backtest {predictor} (steps {x.astype(int).tolist()})"
    return Backtest(predictor, rows, rho_star, rho_star * span, span, pairs, note)
