"""The figures of a training run: ROC, precision-recall, calibration, gains/lift, feature
importance and value deciles.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state, no GUI
backend), so jobs can run in threads and headless CI. :func:`png` turns one into bytes
that MLflow logs as an artifact and the HTML report inlines.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from models.metrics import calibration_curve, gains_curve, value_deciles

Scores = Mapping[str, np.ndarray]


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def axes(title: str, xlabel: str, ylabel: str, size: tuple[float, float] = (5.5, 4.5)) -> Figure:
    """A titled, labelled, lightly gridded figure: every report figure starts here."""
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig


def _score_curves(
    title: str, xlabel: str, ylabel: str, scores: Scores, curve: Callable[[np.ndarray], Any]
) -> tuple[Figure, Axes]:
    """A figure with one line ``curve(score) -> (x, y)`` per score, by name."""
    fig = axes(title, xlabel, ylabel)
    ax = fig.axes[0]
    for name, score in scores.items():
        ax.plot(*curve(score), label=name)
    return fig, ax


def roc(y: np.ndarray, scores: Scores) -> Figure:
    """ROC curves of the model and the baselines on the same rows."""
    fig, ax = _score_curves(
        "ROC (holdout)",
        "false positive rate",
        "true positive rate",
        scores,
        lambda score: roc_curve(y, score)[:2],  # (fpr, tpr)
    )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    ax.legend(loc="lower right")
    return fig


def precision_recall(y: np.ndarray, scores: Scores) -> Figure:
    fig, ax = _score_curves(
        "Precision-recall (holdout)",
        "recall",
        "precision",
        scores,
        lambda score: precision_recall_curve(y, score)[1::-1],  # (recall, precision)
    )
    ax.axhline(float(np.mean(y)), color="grey", linestyle=":", label="base rate")
    ax.legend(loc="upper right")
    return fig


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> Figure:
    """Mean predicted vs observed churn rate per decile of the prediction."""
    curve = calibration_curve(y, p, bins)
    fig = axes("Calibration (holdout)", "mean predicted probability", "observed rate")
    ax = fig.axes[0]
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    ax.plot(curve["predicted"], curve["observed"], marker="o", label="model")
    ax.legend(loc="upper left")
    return fig


def gains(y: np.ndarray, scores: Scores, what: str) -> Figure:
    """Cumulative share of ``what`` (churners, realised value) captured, and the lift."""
    fig = Figure(figsize=(10, 4.5))
    left, right = fig.subplots(1, 2)
    for name, score in scores.items():
        curve = gains_curve(y, score)
        left.plot(curve["targeted"], curve["captured"], label=name)
        right.plot(curve["targeted"], curve["lift"], label=name)
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    left.set(title=f"Gains: share of {what} captured", xlabel="share targeted", ylabel="captured")
    right.axhline(1.0, color="grey", linestyle=":")
    right.set(title="Lift", xlabel="share targeted", ylabel="lift")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is left else "upper right")
    return fig


def importance(gain: pd.Series, top: int = 20) -> Figure:
    """The ``top`` features by gain, largest on top."""
    shown = gain.head(top)[::-1]
    fig = axes("Feature importance (gain)", "gain", "", size=(6.5, 0.28 * len(shown) + 1.2))
    ax = fig.axes[0]
    ax.barh(list(shown.index), shown.to_numpy())
    ax.tick_params(axis="y", labelsize=8)
    return fig


def deciles(y: np.ndarray, predictions: Scores) -> Figure:
    """Mean predicted (bars) vs realised (dots) value per decile of each prediction
    (1 = highest): the dots show the ranking, bar against dot the calibration."""
    fig = axes("Value deciles (holdout)", "decile of the prediction", "mean value per customer")
    ax = fig.axes[0]
    width = 0.8 / len(predictions)
    for i, (name, pred) in enumerate(predictions.items()):
        table = value_deciles(y, pred)
        x = table["decile"].to_numpy() + (i - (len(predictions) - 1) / 2) * width
        bars = ax.bar(x, table["predicted"], width, alpha=0.6, label=f"{name}: predicted")
        color = bars.patches[0].get_facecolor()
        ax.plot(x, table["realised"], "o", color=color[:3], label=f"{name}: realised")
    ax.set_xticks(range(1, 11))
    ax.legend(loc="upper right")
    return fig
