"""Evaluation metrics for the churn (ranking + probability) and value (amount) models.

Plain functions on numpy arrays, so the training jobs, the quality tests, the notebooks
and the monitoring code score predictions the same way. Every function returns plain
floats or small frames that can be logged to MLflow or shown in the HTML report as is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score

#: a probability is clipped to [EPS, 1 - EPS] before the log loss
EPS = 1e-12


def _arrays(y: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype="float64")
    s_arr = np.asarray(score, dtype="float64")
    if y_arr.shape != s_arr.shape or y_arr.ndim != 1:
        raise ValueError(f"labels {y_arr.shape} and scores {s_arr.shape} must be equal 1-d arrays")
    if not len(y_arr):
        raise ValueError("cannot evaluate on zero rows")
    if np.isnan(s_arr).any():
        raise ValueError(f"{int(np.isnan(s_arr).sum())} predictions are NaN")
    return y_arr, s_arr


def _weights(weight: Any, rows: int) -> np.ndarray | None:
    """Sampling weights (inverse inclusion probabilities) as an array, or None."""
    if weight is None:
        return None
    w = np.asarray(weight, dtype="float64")
    if w.shape != (rows,) or not np.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"weights must be {rows} finite positive numbers")
    return w


def _top_mask(score: np.ndarray, share: float, weight: np.ndarray | None = None) -> np.ndarray:
    """The ``share`` of rows with the highest score (ties broken by position, stably);
    with ``weight``, the share of the weight (of the population the rows stand for)."""
    order = np.argsort(-score, kind="stable")
    if weight is None:
        k = max(1, round(len(score) * share))
    else:
        k = max(1, int(np.searchsorted(np.cumsum(weight[order]), share * weight.sum())) + 1)
    mask = np.zeros(len(score), dtype=bool)
    mask[order[:k]] = True
    return mask


def ranking_metrics(y: Any, score: Any, top: float = 0.1, weight: Any = None) -> dict[str, float]:
    """Metrics that only need an ordering: AUC, PR-AUC and top-``top`` lift and capture.

    Baselines that are scores rather than probabilities (days since the last order) are
    compared with these. ``weight``: each row's sampling weight (a sample's metrics then
    estimate the population's).
    """
    y_arr, s_arr = _arrays(y, score)
    w = _weights(weight, len(y_arr))
    if np.unique(y_arr).size < 2:
        raise ValueError("AUC needs both classes among the labels")
    mask = _top_mask(s_arr, top, w)
    base_rate = float(np.average(y_arr, weights=w))
    top_rate = float(np.average(y_arr[mask], weights=None if w is None else w[mask]))
    wy = y_arr if w is None else y_arr * w
    return {
        "auc": float(roc_auc_score(y_arr, s_arr, sample_weight=w)),
        "pr_auc": float(average_precision_score(y_arr, s_arr, sample_weight=w)),
        "base_rate": base_rate,
        "top_decile_lift": top_rate / base_rate,
        "top_decile_capture": float(wy[mask].sum() / wy.sum()),
    }


def classification_metrics(
    y: Any, p: Any, top: float = 0.1, weight: Any = None
) -> dict[str, float]:
    """Ranking metrics plus the probability metrics: Brier score and log loss."""
    y_arr, p_arr = _arrays(y, p)
    w = _weights(weight, len(y_arr))
    if (p_arr < 0).any() or (p_arr > 1).any():
        raise ValueError("probabilities must lie in [0, 1]")
    clipped = np.clip(p_arr, EPS, 1 - EPS)
    losses = y_arr * np.log(clipped) + (1 - y_arr) * np.log(1 - clipped)
    return {
        **ranking_metrics(y_arr, p_arr, top, w),
        "brier": float(np.average((p_arr - y_arr) ** 2, weights=w)),
        "log_loss": float(-np.average(losses, weights=w)),
    }


def calibration_curve(y: Any, p: Any, bins: int = 10) -> pd.DataFrame:
    """Mean predicted vs observed rate in equal-count bins of the prediction.

    Equal-count (quantile) bins keep every point meaningful when most probabilities are
    small, which equal-width bins would leave empty.
    """
    y_arr, p_arr = _arrays(y, p)
    order = np.argsort(p_arr, kind="stable")
    groups = np.array_split(order, min(bins, len(order)))
    return pd.DataFrame(
        {
            "predicted": [float(p_arr[g].mean()) for g in groups],
            "observed": [float(y_arr[g].mean()) for g in groups],
            "count": [len(g) for g in groups],
        }
    )


def gains_curve(y: Any, score: Any, points: int = 100) -> pd.DataFrame:
    """Cumulative share of positives (or of value) captured when targeting the top rows.

    ``lift`` is the captured share over the targeted share; with non-negative value
    labels this is the same curve for value ("gains of realised spend").
    """
    y_arr, s_arr = _arrays(y, score)
    order = np.argsort(-s_arr, kind="stable")
    cum = np.cumsum(np.clip(y_arr[order], 0.0, None))
    total = cum[-1] if cum[-1] > 0 else 1.0
    idx = np.unique(np.linspace(1, len(order), min(points, len(order))).round().astype(int))
    share = idx / len(order)
    captured = cum[idx - 1] / total
    return pd.DataFrame({"targeted": share, "captured": captured, "lift": captured / share})


def regression_metrics(y: Any, pred: Any, top: float = 0.1, weight: Any = None) -> dict[str, float]:
    """Value metrics: MAE, RMSE, Spearman, top-decile capture and error of the total.

    ``top_decile_capture``: share of the realised (positive) value held by the customers
    ranked in the top ``top`` by the prediction -- what a target list would reach.
    ``total_error``: (sum predicted - sum realised) / sum realised, the error a finance
    forecast of the whole base would make. ``weight``: as for :func:`ranking_metrics`
    (Spearman then correlates weighted mid-ranks).
    """
    y_arr, p_arr = _arrays(y, pred)
    w = _weights(weight, len(y_arr))
    ones = np.ones(len(y_arr)) if w is None else w
    positive = np.clip(y_arr, 0.0, None) * ones
    mask = _top_mask(p_arr, top, w)
    total = float((y_arr * ones).sum())
    if np.ptp(p_arr) == 0:
        rho = 0.0
    elif w is None:
        rho = spearmanr(y_arr, p_arr).statistic
    else:
        rho = np.cov(_ranks(y_arr, w), _ranks(p_arr, w), aweights=w)[0, 1] / np.sqrt(
            np.cov(_ranks(y_arr, w), aweights=w) * np.cov(_ranks(p_arr, w), aweights=w)
        )
    return {
        "mae": float(np.average(np.abs(p_arr - y_arr), weights=w)),
        "rmse": float(np.sqrt(np.average((p_arr - y_arr) ** 2, weights=w))),
        "spearman": float(rho),
        "top_decile_capture": float(positive[mask].sum() / max(positive.sum(), EPS)),
        "total_error": (float((p_arr * ones).sum()) - total) / total if total else float("nan"),
    }


def _ranks(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted mid-ranks: the weight below a value plus half the weight of its ties."""
    values, inverse = np.unique(x, return_inverse=True)
    tied = np.bincount(inverse, weights=weight, minlength=len(values))
    return (np.cumsum(tied) - tied / 2)[inverse]


def value_deciles(y: Any, pred: Any, bins: int = 10) -> pd.DataFrame:
    """Mean predicted vs realised value per decile of the prediction (1 = highest)."""
    y_arr, p_arr = _arrays(y, pred)
    order = np.argsort(-p_arr, kind="stable")
    groups = np.array_split(order, min(bins, len(order)))
    return pd.DataFrame(
        {
            "decile": np.arange(1, len(groups) + 1),
            "predicted": [float(p_arr[g].mean()) for g in groups],
            "realised": [float(y_arr[g].mean()) for g in groups],
            "count": [len(g) for g in groups],
        }
    )


def interval_coverage(y: Any, low: Any, high: Any) -> float:
    """Share of realised values inside ``[low, high]`` (0.8 expected for p10..p90)."""
    y_arr = np.asarray(y, dtype="float64")
    return float(np.mean((y_arr >= np.asarray(low)) & (y_arr <= np.asarray(high))))


def linkage_metrics(predicted: Any, actual: Any) -> dict[str, float]:
    """Pairwise precision, recall and F1 of a record linkage: ``predicted`` and ``actual``
    give each record's cluster (same index, any labels); a pair of records is linked when
    they share a cluster. Counts the pairs per cluster, so it is linear in the records."""
    pred = pd.Series(predicted)
    true = pd.Series(actual).reindex(pred.index)
    if true.isna().any():
        raise ValueError(f"{int(true.isna().sum())} records have no actual cluster")

    def pairs(sizes: pd.Series) -> int:
        return int((sizes * (sizes - 1) // 2).sum())

    both = pd.DataFrame({"p": pred.to_numpy(), "t": true.to_numpy()})
    linked = pairs(both.groupby("p").size())
    actual = pairs(both.groupby("t").size())
    agreed = pairs(both.groupby(["p", "t"]).size())
    precision = agreed / linked if linked else 1.0
    recall = agreed / actual if actual else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "linked_pairs": float(linked),
        "true_pairs": float(actual),
    }
