"""Statistics for comparing models on the same evaluation cases, numpy only.

* ``frechet_distance(a, b)``: the Fréchet distance between Gaussians fitted to two feature sets
  [N, D] and [M, D]: ``|mu_a - mu_b|^2 + tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2)``. 0 for identical
  sets; for two 1-D Gaussians it is ``(mu1 - mu2)^2 + (s1 - s2)^2``.
* ``paired_bootstrap(rows, reference)``: each row holds one value per case (one row per model, the
  same cases in the same order). Every bootstrap draw resamples the cases once and applies the same
  indices to every row, so each row gets a 95% percentile interval of its statistic (the mean by
  default) and, against ``reference``, an interval of the gap between them. Pairing cancels what the
  rows share (an easy case is easy for every model), so a gap's interval is far narrower than the
  rows' own when they are correlated.
* ``paired_bootstrap_sets(rows, truth, statistic, reference)``: the same for statistics of a whole
  set of cases, such as ``frechet_distance(row_features, truth_features)``: each draw resamples the
  cases and recomputes ``statistic(row[idx], truth[idx])`` for every row.

``Interval`` holds one row's result: ``mean, lo, hi`` and ``gap, gap_lo, gap_hi`` (this row minus the
reference; None for the reference itself or when there is none).

Traps avoided: the square roots are of symmetric matrices, taken with ``eigh`` with tiny negative
eigenvalues (rounding) clipped to 0, never with a general matrix square root that can turn complex;
rows of different lengths are refused rather than truncated (they would pair the wrong cases). A
set-level statistic can be biased under resampling (a resampled set repeats cases, which shifts a
fitted covariance), so its interval need not contain the point value; the gaps, paired, are fair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from magic141.errors import InvalidInput

LEVEL = 95  # percent: the intervals' coverage


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _features(x, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2 or len(x) < 2:
        raise InvalidInput(f"{name} must be at least 2 feature vectors [N, D], got shape {x.shape}")
    return x


def frechet_distance(a, b) -> float:
    """Fréchet distance between Gaussians fitted to features ``a`` [N, D] and ``b`` [M, D] (1-D: D = 1)."""
    a, b = _features(a, "a"), _features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise InvalidInput(f"feature sets differ in dimension: {a.shape[1]} and {b.shape[1]}")
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrt_psd(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)  # eigenvalues of Sa^1/2 Sb Sa^1/2
    trace = np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    shift = float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2))
    return max(0.0, shift + float(trace))


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap interval, and its gap to the reference row (None: no reference)."""

    mean: float
    lo: float
    hi: float
    gap: float | None = None
    gap_lo: float | None = None
    gap_hi: float | None = None

    def to_json(self) -> dict:
        return {k: None if v is None else round(float(v), 4) for k, v in asdict(self).items()}


def _bounds(boot: np.ndarray) -> tuple[float, float]:
    """The central LEVEL% percentile interval of bootstrap values (draws giving NaN left out)."""
    boot = boot[~np.isnan(boot)]
    if not len(boot):
        return float("nan"), float("nan")
    lo, hi = np.percentile(boot, [(100 - LEVEL) / 2, (100 + LEVEL) / 2])
    return float(lo), float(hi)


def _intervals(point: dict, boot: dict, reference: str | None) -> dict[str, Interval]:
    if reference is not None and reference not in point:
        raise InvalidInput(f"reference {reference!r} is not one of the rows: {', '.join(point)}")
    out = {}
    for name in point:
        lo, hi = _bounds(boot[name])
        if reference is None or name == reference:
            out[name] = Interval(point[name], lo, hi)
        else:
            gap_lo, gap_hi = _bounds(boot[name] - boot[reference])
            out[name] = Interval(point[name], lo, hi, point[name] - point[reference], gap_lo, gap_hi)
    return out


def _cases(rows: dict, what: str, truth: np.ndarray | None = None) -> int:
    """The number of cases every row (and the truth) holds; rows of different lengths are refused."""
    if not rows:
        raise InvalidInput("no rows to compare")
    lengths = [(name, len(row)) for name, row in rows.items()]
    lengths += [] if truth is None else [("the truth", len(truth))]
    if len({n for _, n in lengths}) != 1:
        found = ", ".join(f"{name}: {n}" for name, n in lengths)
        raise InvalidInput(f"every row must hold one {what} per case, the same cases; got {found}")
    n = lengths[0][1]
    if n < 1:
        raise InvalidInput("rows hold no cases")
    return n


def paired_bootstrap(
    rows: dict[str, np.ndarray],
    reference: str | None = None,
    *,
    draws: int = 1000,
    seed: int = 0,
    statistic: Callable[[np.ndarray], float] = np.nanmean,
) -> dict[str, Interval]:
    """Paired bootstrap intervals of ``statistic`` of each row (one value per case; booleans become
    rates) and of each row's gap to ``reference``."""
    rows = {name: np.asarray(row, np.float64) for name, row in rows.items()}
    for name, row in rows.items():
        if row.ndim != 1:
            raise InvalidInput(f"row {name!r} must hold one value per case, got shape {row.shape}")
    n = _cases(rows, "value")
    idx = np.random.default_rng(seed).integers(0, n, size=(draws, n))  # the same draws for every row
    point = {name: float(statistic(row)) for name, row in rows.items()}
    boot = {name: np.array([statistic(row[i]) for i in idx], np.float64) for name, row in rows.items()}
    return _intervals(point, boot, reference)


def paired_bootstrap_sets(
    rows: dict[str, np.ndarray],
    truth: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    reference: str | None = None,
    *,
    draws: int = 200,
    seed: int = 0,
) -> dict[str, Interval]:
    """Paired bootstrap intervals of a set-level ``statistic(row, truth)`` (rows and truth [N, D], the
    same N cases) and of each row's gap to ``reference``."""
    rows = {name: np.asarray(row, np.float64) for name, row in rows.items()}
    truth = np.asarray(truth, np.float64)
    n = _cases(rows, "feature vector", truth)
    idx = np.random.default_rng(seed).integers(0, n, size=(draws, n))
    point = {name: float(statistic(row, truth)) for name, row in rows.items()}
    boot = {
        name: np.array([statistic(row[i], truth[i]) for i in idx], np.float64) for name, row in rows.items()
    }
    return _intervals(point, boot, reference)
