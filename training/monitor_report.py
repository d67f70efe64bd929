"""The monitoring report: one self-contained HTML file per monitoring run (the training
report's style, :class:`training.report.Report`), with the history of earlier runs.

Figures: churn calibration per scoring run, estimated (label-free) against realised AUC
over time, the p10-p90 coverage over time with its 70-90% band, the PIT histogram, a
feature-by-run PSI heatmap, and the policy's incremental value per period with its 95%
interval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from training.plots import axes, png
from training.report import Report

if TYPE_CHECKING:
    from training.monitor import MonitorRun

#: the monitoring figures' size (inches)
MONITOR_SIZE = (6.0, 4.2)
#: features shown in the heatmap (the ones that drifted most)
HEATMAP_ROWS = 25


def _series(history: pd.DataFrame, kind: str, check: str, subject: str = "all") -> pd.Series:
    f = history[
        (history["kind"] == kind) & (history["check"] == check) & (history["subject"] == subject)
    ]
    return f.groupby("checked_at")["value"].last().sort_index()


def _run_ticks(ax: Axes, runs: pd.Index) -> None:
    """Positions 0, 1, ... of the x axis labelled with the monitoring runs' times."""
    ax.set_xticks(np.arange(len(runs)), [f"{t:%m-%d %H:%M}" for t in runs], rotation=45, fontsize=7)


def _runs_figure(title: str, ylabel: str, runs: pd.Index) -> tuple[Figure, Axes, np.ndarray]:
    """A figure over the monitoring ``runs`` (one x position each) and those positions."""
    fig = axes(title, "monitoring run", ylabel, size=MONITOR_SIZE)
    ax = fig.axes[0]
    _run_ticks(ax, runs)
    return fig, ax, np.arange(len(runs))


def calibration_figure(curves: pd.DataFrame) -> Figure | None:
    cal = curves[curves["curve"] == "calibration"]
    if cal.empty:
        return None
    fig = axes(
        "Churn calibration per matured scoring run",
        "mean predicted",
        "observed rate",
        size=MONITOR_SIZE,
    )
    ax = fig.axes[0]
    runs = list(dict.fromkeys(cal["scoring_run"]))
    for i, run in enumerate(runs):
        part = cal[cal["scoring_run"] == run].drop_duplicates("x").sort_values("x")
        shade = 0.3 + 0.7 * (i + 1) / len(runs)
        ax.plot(part["x"], part["y"], marker="o", alpha=shade, label=str(run)[:20])
    top = float(max(cal["x"].max(), cal["y"].max()))
    ax.plot([0, top], [0, top], "k--", lw=1, label="perfect")
    ax.legend(fontsize=7)
    return fig


def auc_figure(history: pd.DataFrame) -> Figure | None:
    est = _series(history, "churn", "estimated_auc")
    if est.empty:
        return None
    low = _series(history, "churn", "estimated_auc_low").reindex(est.index)
    high = _series(history, "churn", "estimated_auc_high").reindex(est.index)
    real = _series(history, "churn", "auc")
    fig, ax, x = _runs_figure(
        "Churn AUC: label-free estimate (latest run) and realised", "AUC", est.index
    )
    ax.plot(x, est.to_numpy(), marker="o", label="estimated (CBPE)")
    ax.fill_between(x, low.to_numpy(), high.to_numpy(), alpha=0.2, label="90% interval")
    if not real.empty:
        rx = [list(est.index).index(t) for t in real.index if t in est.index]
        ax.plot(rx, real.reindex(est.index).dropna().to_numpy(), marker="s", label="realised")
    ax.legend(fontsize=8)
    return fig


def coverage_figure(history: pd.DataFrame) -> Figure | None:
    cov = _series(history, "value", "coverage")
    if cov.empty:
        return None
    fig, ax, x = _runs_figure("Value p10-p90 interval coverage", "coverage", cov.index)
    ax.axhspan(0.7, 0.9, color="green", alpha=0.1, label="70-90%")
    ax.axhline(0.8, color="k", lw=1, ls="--")
    ax.plot(x, cov.to_numpy(), marker="o", label="realised coverage")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return fig


def pit_figure(curves: pd.DataFrame, run_id: str) -> Figure | None:
    pit = curves[(curves["curve"] == "pit") & (curves["run_id"] == run_id)]
    if pit.empty:
        return None
    fig = axes(
        "Where realised value falls in the predicted band", "bin", "share", size=MONITOR_SIZE
    )
    ax = fig.axes[0]
    x = np.arange(len(pit))
    ax.bar(x - 0.2, pit["y"], 0.4, label="realised")
    ax.bar(x + 0.2, pit["expected"], 0.4, label="calibrated")
    ax.set_xticks(x, ["< p10", "p10-p50", "p50-p90", "> p90"][: len(pit)])
    ax.legend(fontsize=8)
    return fig


def drift_heatmap(history: pd.DataFrame) -> Figure | None:
    psi = history[(history["kind"] == "features") & (history["check"] == "psi")]
    if psi.empty:
        return None
    table = psi.pivot_table(index="subject", columns="checked_at", values="value", aggfunc="last")
    table = table.loc[table.max(axis=1).sort_values(ascending=False).index[:HEATMAP_ROWS]]
    fig = Figure(figsize=(max(5.0, 1.0 + 0.5 * table.shape[1]), 1.2 + 0.28 * len(table)))
    ax = fig.add_subplot()
    image = ax.imshow(
        table.to_numpy(),
        aspect="auto",
        cmap="Reds",
        vmin=0,
        vmax=max(0.4, float(np.nanmax(table.to_numpy()))),
    )
    ax.set_yticks(np.arange(len(table)), list(table.index), fontsize=7)
    _run_ticks(ax, table.columns)
    ax.set_title("PSI per feature and monitoring run (most drifted first)")
    fig.colorbar(image, ax=ax, label="PSI")
    return fig


def policy_value_figure(frame: pd.DataFrame) -> Figure | None:
    """Incremental value per customer (treated - control) per period with its 95%
    interval, from this run's ``policy`` checks; the zero line is "the policy earns
    nothing"."""
    policy = frame[(frame["kind"] == "policy") & frame["subject"].str.startswith("period ")]
    wide = policy.pivot_table(index="subject", columns="check", values="value", aggfunc="last")
    needed = ["incremental_value", "incremental_value_lo", "incremental_value_hi"]
    if wide.empty or not set(needed) <= set(wide.columns):
        return None
    wide = wide[needed].dropna(subset=["incremental_value"]).sort_index()
    if wide.empty:
        return None
    fig = axes(
        "Policy value: treated - control per customer (95% interval)",
        "period of the decisions",
        "incremental value per customer",
        size=MONITOR_SIZE,
    )
    ax = fig.axes[0]
    x = np.arange(len(wide))
    mid = wide["incremental_value"].to_numpy()
    err = np.vstack(
        [
            mid - wide["incremental_value_lo"].to_numpy(),
            wide["incremental_value_hi"].to_numpy() - mid,
        ]
    )
    ax.errorbar(x, mid, yerr=np.nan_to_num(err), fmt="o-", capsize=4, label="incremental value")
    ax.axhline(0.0, color="k", lw=1, ls="--", label="no effect")
    ax.set_xticks(x, [s.removeprefix("period ") for s in wide.index], rotation=45, fontsize=7)
    ax.legend(fontsize=8)
    return fig


def render(result: MonitorRun, history: pd.DataFrame, curves: pd.DataFrame) -> str:
    """The HTML report of ``result`` with ``history`` (earlier ``monitor_checks`` rows)."""
    frame = result.frame
    everything = pd.concat([history, frame], ignore_index=True) if len(history) else frame
    everything = everything.assign(checked_at=pd.to_datetime(everything["checked_at"], utc=True))
    report = Report(
        f"Rapport monitoring {result.run_id}",
        facts={
            "as of": f"{result.as_of:%Y-%m-%d %H:%M} UTC",
            **{f"scoring run ({k})": v for k, v in result.scoring_runs.items()},
            "checks": f"{len(frame)}: {len(result.alerts)} alert, {len(result.warnings)} warn",
        },
        notes=[
            *result.notes,
            "Levels: alert > warn > ok by the thresholds (models/default_alerts.yaml or "
            "--thresholds). A group smaller than min_rows is shown but never judged.",
            "estimated_* checks need no labels: they assume the churn probabilities are "
            "calibrated (checked by calibration_error once labels mature).",
        ],
    )
    columns = ["kind", "check", "subject", "value", "threshold", "level", "detail"]
    flagged = frame[frame["level"] != "ok"][columns]
    report.tables.append(
        ("Alerts and warnings", flagged if len(flagged) else pd.DataFrame({"": ["none"]}))
    )
    overall = frame[(frame["subject"] == "all") & frame["kind"].isin(["churn", "value"])]
    report.tables.append(("Churn and value, whole base", overall[columns].set_index("kind")))
    for kind in ("churn", "value"):
        part = frame[(frame["kind"] == kind) & (frame["subject"] != "all")]
        if len(part):
            wide = part.pivot_table(
                index="subject", columns="check", values="value", aggfunc="last"
            )
            report.tables.append((f"{kind} by ABC tier, RFM segment and region", wide))
    drift = frame[frame["kind"] == "features"]
    if len(drift):
        wide = drift.pivot_table(index="subject", columns="check", values="value", aggfunc="last")
        report.tables.append(
            ("Drift against the champion's reference", wide.sort_values("psi", ascending=False))
        )
    policy = frame[frame["kind"] == "policy"]
    if len(policy):
        report.tables.append(
            ("Policy health (treated vs control, exploration)", policy[columns].set_index("check"))
        )
    skew = frame[frame["kind"] == "skew"]
    if len(skew):
        report.tables.append(
            ("Live against batch (sampled live feature vectors)", skew[columns].set_index("check"))
        )
    figures = [
        ("churn calibration", calibration_figure(curves)),
        ("churn AUC over time", auc_figure(everything)),
        ("value interval coverage over time", coverage_figure(everything)),
        ("PIT histogram", pit_figure(curves, result.run_id)),
        ("feature drift heatmap", drift_heatmap(everything)),
        ("policy value with intervals", policy_value_figure(frame)),
    ]
    report.figures = [(name, png(fig)) for name, fig in figures if fig is not None]
    return report.to_html()
