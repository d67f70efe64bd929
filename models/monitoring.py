"""Monitoring statistics: drift (PSI, KS, Jensen-Shannon, chi-square), label-free churn
performance (CBPE) and the calibration / interval diagnostics the monitor compares.

Plain functions on numpy arrays (no I/O), so the monitoring job, its tests and the bench
compute them the same way. Written over scipy rather than taken from Evidently or NannyML
(checked 2026-12 in a scratch environment with pandas 3.1 / numpy 2.4): Evidently 0.7.23
resolves but fails at import (``pandas.core.dtypes.common.infer_dtype_from_object`` is gone
in pandas 3); NannyML 0.13.1 runs CBPE but caps LightGBM below 4.6 (the lock has 4.7),
adds 35 packages to ours (s3fs, gcsfs and the Google Cloud clients, kaleido, FLAML with
XGBoost and NCCL) and sends usage telemetry unless told not to. What we need is a few
dozen lines each, tested against what the simulated worlds realise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, ks_2samp, rankdata

#: a bin share is floored at this before the PSI's log ratio (an empty bin stays finite)
PSI_FLOOR = 1e-4
#: the rows a two-sample test reads at most per side (its statistic is stable long before)
TEST_ROWS = 50_000
MISSING = "<missing>"


def _sample(values: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    if len(values) <= rows:
        return values
    return np.random.default_rng(seed).choice(values, rows, replace=False)


def _psi(ref_share: np.ndarray, cur_share: np.ndarray) -> float:
    ref = np.maximum(ref_share, PSI_FLOOR)
    cur = np.maximum(cur_share, PSI_FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def numeric_edges(reference: Any, bins: int = 10) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (duplicates merged: a feature that is
    mostly 0 gets fewer bins, never empty ones)."""
    ref = np.asarray(reference, dtype="float64")
    ref = ref[np.isfinite(ref)]
    if not len(ref):
        return np.array([], dtype="float64")
    return np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))


def numeric_shares(values: Any, edges: np.ndarray) -> np.ndarray:
    """Shares of the bins cut by ``edges`` (right-closed), missing values in a last bin."""
    arr = np.asarray(values, dtype="float64")
    missing = ~np.isfinite(arr)
    idx = np.searchsorted(edges, arr[~missing], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype("float64")
    counts = np.append(counts, missing.sum())
    return counts / max(len(arr), 1)


def psi_numeric(reference: Any, current: Any, bins: int = 10) -> float:
    """Population stability index over the reference's deciles plus a missing bin.

    0.1 is the usual "look", 0.2 "moderate" and 0.3 "large" shift."""
    edges = numeric_edges(reference, bins)
    return _psi(numeric_shares(reference, edges), numeric_shares(current, edges))


def _counts(values: Any) -> pd.Series:
    """Rows per category (missing as one), counted before any conversion to text."""
    counts = pd.Series(values, dtype="object").value_counts(dropna=False)
    counts.index = [MISSING if pd.isna(k) else str(k) for k in counts.index]
    return counts.groupby(level=0).sum()


def category_shares(reference: Any, current: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Shares of each category (missing as one) in both samples, over the union."""
    ref, cur = _counts(reference), _counts(current)
    names = sorted(set(ref.index) | set(cur.index))
    r = ref.reindex(names, fill_value=0).to_numpy(dtype="float64")
    c = cur.reindex(names, fill_value=0).to_numpy(dtype="float64")
    return r / max(r.sum(), 1.0), c / max(c.sum(), 1.0), names


def psi_categorical(reference: Any, current: Any) -> float:
    ref, cur, _ = category_shares(reference, current)
    return _psi(ref, cur)


def ks_test(reference: Any, current: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov (statistic D, p-value) on the finite values.

    D is what thresholds read: with a million rows every p-value is tiny for a shift
    nobody cares about, while D is the largest gap between the two CDFs whatever the size.
    """
    ref = np.asarray(reference, dtype="float64")
    cur = np.asarray(current, dtype="float64")
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if not len(ref) or not len(cur):
        return float("nan"), float("nan")
    result = ks_2samp(_sample(ref, TEST_ROWS), _sample(cur, TEST_ROWS, 1))
    return float(result.statistic), float(result.pvalue)


def js_distance(reference: Any, current: Any) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two category distributions."""
    ref, cur, _ = category_shares(reference, current)
    mid = (ref + cur) / 2

    def kl(p: np.ndarray) -> float:
        nz = p > 0
        return float(np.sum(p[nz] * np.log2(p[nz] / mid[nz])))

    return float(np.sqrt(max(0.5 * kl(ref) + 0.5 * kl(cur), 0.0)))


def chi2_test(reference: Any, current: Any) -> float:
    """Chi-square test of equal category distributions (p-value; 1.0 for one category)."""
    ref, cur = _counts(reference), _counts(current)
    names = sorted(set(ref.index) | set(cur.index))
    if len(names) < 2:
        return 1.0
    table = np.vstack(
        [ref.reindex(names, fill_value=0).to_numpy(), cur.reindex(names, fill_value=0).to_numpy()]
    )
    return float(chi2_contingency(table).pvalue)


# --------------------------------------------------------------------------- churn
def expected_calibration_error(y: Any, p: Any, bins: int = 10) -> float:
    """Count-weighted mean |observed - predicted| over equal-count bins of the prediction."""
    y_arr = np.asarray(y, dtype="float64")
    p_arr = np.asarray(p, dtype="float64")
    order = np.argsort(p_arr, kind="stable")
    groups = np.array_split(order, min(bins, len(order)))
    gaps = [abs(y_arr[g].mean() - p_arr[g].mean()) * len(g) for g in groups if len(g)]
    return float(sum(gaps) / max(len(p_arr), 1))


def _auc_from_ranks(ranks: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUC of 0/1 labels ``y`` from the scores' ranks. The rank sum is an
    elementwise product and a sum, not ``ranks @ y``: a BLAS dot product spreads over
    threads that, on a busy machine, cost 100x the work (27 ms against 0.2 ms per
    200,000 rows); ranks are half-integers, so both sums are exact and equal."""
    n1 = int(np.count_nonzero(y))
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((np.sum(ranks * y) - n1 * (n1 + 1) / 2) / (n1 * n0))


def cbpe_auc(
    p: Any, replicates: int = 200, level: float = 0.9, seed: int = 0, rows: int = 200_000
) -> tuple[float, float, float]:
    """Label-free AUC estimate from calibrated probabilities (confidence-based performance
    estimation), with a ``level`` interval: (estimate, low, high).

    If the probabilities are calibrated, each customer churns with probability ``p``, so
    the AUC the labels will give is the AUC of labels drawn from ``p``. The estimate is its
    mean over ``replicates`` draws, the interval their quantiles (the spread the finite
    sample alone gives; it widens when the population is small). Ranks are computed once,
    so each draw costs one dot product; above ``rows`` customers a fixed sample is used.
    """
    arr = _sample(np.asarray(p, dtype="float64"), rows, seed)
    if not len(arr):
        return float("nan"), float("nan"), float("nan")
    ranks = rankdata(arr)
    rng = np.random.default_rng(seed)
    draws = np.array(
        [_auc_from_ranks(ranks, rng.random(len(arr)) < arr) for _ in range(replicates)]
    )
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return float("nan"), float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(draws.mean()), float(low), float(high)


def rate_interval(p: Any, level: float = 0.9) -> tuple[float, float, float]:
    """Expected share of positives under calibrated ``p`` with a normal interval
    (the sum of independent Bernoullis has variance sum p(1-p))."""
    arr = np.asarray(p, dtype="float64")
    n = max(len(arr), 1)
    mean = float(arr.mean()) if len(arr) else float("nan")
    sd = float(np.sqrt(np.sum(arr * (1 - arr)))) / n
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    return mean, mean - z * sd, mean + z * sd


# --------------------------------------------------------------------------- value
#: the PIT bins the value model's quantiles cut: below p10, p10-p50, p50-p90, above p90
PIT_BINS = ("below_p10", "p10_p50", "p50_p90", "above_p90")
PIT_EXPECTED = (0.1, 0.4, 0.4, 0.1)


def pit_histogram(y: Any, p10: Any, p50: Any, p90: Any) -> pd.DataFrame:
    """Where the realised values fall among the predicted quantiles (a coarse probability
    integral transform): shares per bin next to the 10/40/40/10 a calibrated band gives."""
    y_arr = np.asarray(y, dtype="float64")
    cuts = [np.asarray(q, dtype="float64") for q in (p10, p50, p90)]
    idx = (y_arr >= cuts[0]).astype(int) + (y_arr > cuts[1]) + (y_arr > cuts[2])
    counts = np.bincount(idx, minlength=4)
    return pd.DataFrame(
        {"bin": PIT_BINS, "share": counts / max(len(y_arr), 1), "expected": PIT_EXPECTED}
    )


def informative_share(values: Any) -> float:
    """Share of rows that carry information: non-zero and non-missing (numbers), or
    non-missing (categories)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return float(np.mean(np.isfinite(values) & (values != 0))) if len(values) else 0.0
    series = pd.Series(values)
    if not len(series):
        return 0.0
    if pd.api.types.is_numeric_dtype(series):
        arr = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        return float(np.mean(np.isfinite(arr) & (arr != 0)))
    return float(series.notna().mean())


def emptied(reference: Any, current: Any) -> float:
    """Share of the reference's informative rows gone now: ``1 - informative share now /
    informative share in the reference`` (0 when nothing changed, 1 when a feed stopped
    and the feature is all zero or missing; negative when it fills up). A feature never
    informative in the reference gives 0."""
    ref = informative_share(reference)
    return 0.0 if ref == 0 else 1.0 - informative_share(current) / ref


# --------------------------------------------------------------------------- noise
#: a gap is judged beyond this many standard errors of its sampling noise (the two-sided
#: 95% normal interval): a group of a few hundred customers must not page by chance
NOISE_Z = 1.96
#: the normal quantile of a two-sided 90% interval (the label-free estimates' level)
Z90 = 1.6449


def beyond_noise(gap: float, *variances: float, z: float = NOISE_Z) -> tuple[float, float]:
    """``(|gap| beyond its interval, the interval's half-width)``: how far a gap between
    two figures lies outside ``z`` standard errors of the noise their samples give (the
    variances of the figures, independent samples); 0 when the interval holds it."""
    finite = [v for v in variances if np.isfinite(v)]
    half = z * float(np.sqrt(sum(finite))) if finite else 0.0
    if not np.isfinite(gap):
        return float("nan"), half
    return max(abs(gap) - half, 0.0), half


def grown(gap: float, accepted: float) -> float:
    """How much a gap outgrew one the model already had when it was accepted (its
    holdout's, for the same group): ``|gap| - |accepted|``, floored at 0; the gap itself
    when ``accepted`` is unknown (NaN). The holdout is one season, so its gap's sign does
    not carry over (a tier over-covered at the holdout may be under-covered a season
    later on a stable world); its size is what the champion was promoted with."""
    if not np.isfinite(accepted):
        return abs(gap)
    return max(abs(gap) - abs(accepted), 0.0)


def rate_variance(p: Any) -> float:
    """Variance of the realised share of positives when each row is positive with its
    calibrated probability ``p`` (a sum of independent Bernoullis over n squared)."""
    arr = np.asarray(p, dtype="float64")
    return float(np.sum(arr * (1 - arr))) / max(len(arr), 1) ** 2


def share_variance(share: float, n: float) -> float:
    """Binomial variance of a share measured on ``n`` rows (NaN when unknown)."""
    if not (np.isfinite(share) and np.isfinite(n)) or n <= 0:
        return float("nan")
    return share * (1 - share) / n


def auc_variance(auc: float, positives: float, negatives: float) -> float:
    """Hanley-McNeil (1982) variance of an AUC measured on ``positives`` and ``negatives``
    (NaN when unknown): the interval the holdout and a realised AUC each carry."""
    if (
        not all(np.isfinite(v) for v in (auc, positives, negatives))
        or min(positives, negatives) < 1
    ):
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    return float(max(var, 0.0) / (positives * negatives))


def spearman_variance(rho: float, n: float) -> float:
    """Approximate variance of a Spearman correlation on ``n`` rows (Fisher's z with the
    Bonett-Wright factor, mapped back to the correlation's scale)."""
    if not (np.isfinite(rho) and np.isfinite(n)) or n <= 3:
        return float("nan")
    return float((1 - rho**2) ** 2 * (1 + rho**2 / 2) / (n - 3))


def ratio_variance(y: Any, x: Any) -> tuple[float, float]:
    """``sum(y) / sum(x)`` over independent rows, with its linearised (delta-method)
    variance ``sum((y - R x)^2) / sum(x)^2``: what customers did against what was
    predicted for them, and the noise of that ratio from the rows alone (NaN when
    ``x`` sums to 0)."""
    y_arr = np.asarray(y, dtype="float64")
    x_arr = np.asarray(x, dtype="float64")
    known = np.isfinite(y_arr) & np.isfinite(x_arr)
    y_arr, x_arr = y_arr[known], x_arr[known]
    total = float(x_arr.sum())
    if not len(x_arr) or total <= 0:
        return float("nan"), float("nan")
    ratio = float(y_arr.sum()) / total
    return ratio, float(np.sum((y_arr - ratio * x_arr) ** 2)) / total**2


# --------------------------------------------------------------------------- peers
#: strata of the prediction a group is compared with its peers within (deciles)
PEER_STRATA = 10


def holm(p: Any) -> np.ndarray:
    """Holm's step-down adjustment of one-sided p-values over a family (NaN stays NaN and
    is not counted): the family-wise error stays at most the level whichever are true."""
    arr = np.asarray(p, dtype="float64")
    out = np.full(arr.shape, np.nan)
    known = np.flatnonzero(np.isfinite(arr))
    order = known[np.argsort(arr[known], kind="stable")]
    factors = len(order) - np.arange(len(order))
    out[order] = np.minimum(np.maximum.accumulate(arr[order] * factors), 1.0)
    return out


def peer_shortfall(
    y: Any, x: Any, group: Any, strata: int = PEER_STRATA, by: Any = None
) -> pd.DataFrame:
    """Each group's total of ``y`` (what customers did) against what the **other** groups'
    customers of the same prediction did: indirect standardisation over deciles of ``x``
    (the prediction), so expected = sum over strata of the group's ``x`` times the rest's
    ``y`` per unit of ``x``. Season, campaigns and a base-wide miscalibration move every
    group alike and cancel; a mix of predictions that differs between groups is matched
    by the strata. The variance adds the group's residuals ``(y - R x)^2`` and the noise
    of the rest's ratios (delta method). One-sided (only a shortfall counts): ``z`` =
    (expected - observed) / its standard error, ``p`` its normal tail, ``p_holm`` Holm's
    adjustment over the groups. ``by``: strata from the deciles of another prediction
    (``x`` = 1 counts per customer, e.g. complaints among customers of the same churn
    risk); an excess instead of a shortfall is tested by passing ``-y``. Columns:
    ``group, rows, observed, expected, shortfall`` (1 - observed / expected),
    ``variance`` (of observed - expected), ``z, p, p_holm``."""
    x_arr = np.asarray(x, dtype="float64")
    frame = pd.DataFrame(
        {
            "y": np.asarray(y, dtype="float64"),
            "x": x_arr,
            "by": x_arr if by is None else np.asarray(by, dtype="float64"),
            "group": np.asarray(group, dtype="object"),
        }
    )
    known = np.isfinite(frame["y"]) & np.isfinite(frame["x"]) & np.isfinite(frame["by"])
    frame = frame[known & frame["group"].notna()]
    columns = ["group", "rows", "observed", "expected", "shortfall", "variance", "z", "p"]
    if frame.empty:
        return pd.DataFrame(columns=[*columns, "p_holm"])
    ranks = frame["by"].rank(method="first")
    frame["stratum"] = np.minimum((strata * (ranks - 1) / len(frame)).astype(int), strata - 1)
    frame = frame.assign(yy=frame["y"] ** 2, xy=frame["x"] * frame["y"], xx=frame["x"] ** 2)
    sums = ["y", "x", "yy", "xy", "xx"]
    cell = frame.groupby(["group", "stratum"], observed=True)[sums].sum()
    cell["n"] = frame.groupby(["group", "stratum"], observed=True).size()
    total = cell.groupby(level="stratum").sum()
    rest = total.reindex(cell.index.get_level_values("stratum")).set_axis(cell.index) - cell
    ratio = (rest["y"] / rest["x"]).where(rest["x"] > 0)
    own = cell["yy"] - 2 * ratio * cell["xy"] + ratio**2 * cell["xx"]
    rest_var = (rest["yy"] - 2 * ratio * rest["xy"] + ratio**2 * rest["xx"]) / rest["x"] ** 2
    parts = pd.DataFrame(
        {
            "rows": cell["n"],
            "observed": cell["y"],
            "expected": ratio * cell["x"],
            "variance": own + cell["x"] ** 2 * rest_var,
        }
    )
    # a stratum no other group has rows in says nothing about this one
    parts = parts[ratio.notna()]
    out = parts.groupby(level="group").sum().reset_index()
    missing = frame.groupby("group").size().index.difference(out["group"])
    if len(missing):
        empty = pd.DataFrame({"group": missing, "rows": 0, "observed": 0.0, "expected": 0.0})
        out = pd.concat([out, empty.assign(variance=0.0)], ignore_index=True)
    from scipy.stats import norm

    sd = np.sqrt(out["variance"].clip(lower=0))
    out["shortfall"] = np.where(out["expected"] > 0, 1 - out["observed"] / out["expected"], np.nan)
    out["z"] = np.where(sd > 0, (out["expected"] - out["observed"]) / sd, np.nan)
    out["p"] = norm.sf(out["z"])
    out["p_holm"] = holm(out["p"])
    return out[[*columns, "p_holm"]].sort_values("group").reset_index(drop=True)


def gap_vs_past(now: pd.DataFrame, past: pd.DataFrame, excess: bool = False) -> pd.DataFrame:
    """Each group's gap to its peers now against its own gap in earlier runs (a difference
    in differences): a group that always differs from its peers (a region that complains
    more at the same risk: a service centre of its own) keeps its gap and is not flagged;
    a group whose gap grew is.

    ``now``: one row per group of :func:`peer_shortfall` (``group, observed, expected,
    variance``; counts as positive sizes); ``past``: the same columns, one row per group and
    earlier run. The gap is the relative shortfall ``(expected - observed) / expected``
    (an ``excess`` when ``excess``: ``(observed - expected) / expected``), its variance
    ``variance / expected^2`` (delta method); the earlier runs are pooled (their observed
    and expected summed, their variances too). ``z`` = (gap now - pooled gap) / the square
    root of both variances, ``p`` its one-sided normal tail (only a gap that grew in the
    tested direction counts). Columns: ``group, gap, gap_sd, past_gap, past_sd,
    past_runs, z, p``; a group without an earlier run has ``past_runs`` 0 and NaN after."""
    from scipy.stats import norm

    sign = -1.0 if excess else 1.0
    cols = ["observed", "expected", "variance"]
    cur = now.set_index("group")[cols].astype("float64")
    before = past[past["expected"].abs() > 0] if len(past) else past
    pooled = (
        before.groupby("group")[cols].sum().astype("float64")
        if len(before)
        else pd.DataFrame(columns=cols, dtype="float64")
    )
    runs = before.groupby("group").size() if len(before) else pd.Series(dtype="int64")
    pooled = pooled.reindex(cur.index)

    def gap(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        e = frame["expected"].where(frame["expected"] > 0)
        return sign * (e - frame["observed"]) / e, np.sqrt(frame["variance"].clip(lower=0)) / e

    g_now, sd_now = gap(cur)
    g_past, sd_past = gap(pooled)
    sd = np.sqrt(sd_now**2 + sd_past**2)
    z = ((g_now - g_past) / sd).where(sd > 0)
    out = pd.DataFrame(
        {
            "gap": g_now,
            "gap_sd": sd_now,
            "past_gap": g_past,
            "past_sd": sd_past,
            "past_runs": runs.reindex(cur.index).fillna(0).astype("int64"),
            "z": z,
            "p": norm.sf(z),
        }
    )
    return out.rename_axis("group").reset_index()


def customers_for_power(
    shortfall: float, variance: float, groups: int, alpha: float = 0.01, power: float = 0.8
) -> float:
    """Customers a group needs for :func:`peer_shortfall` to flag a relative
    ``shortfall`` at Holm level ``alpha`` over ``groups`` with probability ``power``:
    ``variance`` is the per-customer variance of (observed - expected) / expected (the
    check's variance times its rows over expected squared, measured on a world). Holm's
    first rejection is Bonferroni's, so z = the one-sided ``alpha / groups`` quantile plus
    the ``power`` quantile, and rows = variance * (z / shortfall)^2."""
    from scipy.stats import norm

    z = float(norm.isf(alpha / groups) + norm.isf(1 - power))
    return float(variance * (z / shortfall) ** 2)


def customers_for_excess(
    effect: float, variance: float, alert: float, z: float = NOISE_Z, power: float = 0.8
) -> float:
    """Rows a rate check valued as its relative rise beyond the ``z`` noise interval
    (``complaints_vs_past``: (now - past - z * sd) / past) needs to pass ``alert`` with
    probability ``power`` when the true relative rise is ``effect``: ``variance`` is the
    per-row variance of (now - past) / past (the squared interval's sd times the rows,
    measured on a world). The value passes ``alert`` when the estimated rise minus ``z``
    sd does, so sd must be below (effect - alert) / (z + the ``power`` quantile); rows =
    variance / sd^2. Infinite when ``effect`` does not exceed ``alert``."""
    from scipy.stats import norm

    if effect <= alert:
        return float("inf")
    sd = (effect - alert) / (z + float(norm.isf(1 - power)))
    return float(variance / sd**2)


def peer_power(
    shortfall: float, variance: float, rows: float, groups: int, alpha: float = 0.01
) -> float:
    """The probability that :func:`peer_shortfall` flags a group of ``rows`` customers
    with a true relative ``shortfall`` (the inverse of :func:`customers_for_power`)."""
    from scipy.stats import norm

    return float(norm.sf(norm.isf(alpha / groups) - shortfall * np.sqrt(rows / variance)))
