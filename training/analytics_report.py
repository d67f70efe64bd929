"""The customer-base analytics report: five figures and the key tables in one HTML file.

Cohort heatmap, migration heatmap, the segment map, the equity waterfall and the
retention curves, drawn on ``matplotlib.figure.Figure`` (no GUI state) and inlined by
:class:`training.report.Report`, so the file reads offline and from MLflow's artifacts.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from features.tables.analytics import AnalyticsTables
from models.base_analytics import Equity, EquityChange, TransitionMatrix
from training.plots import png
from training.report import Report


def cohort_heatmap(cohorts: pd.DataFrame) -> Figure:
    """Share of each signup cohort buying in each period since signup."""
    grid = cohorts.pivot(index="cohort_start", columns="periods_since", values="active_rate")
    fig = Figure(figsize=(8, 0.35 * len(grid) + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(grid.to_numpy(float), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(len(grid)), [f"{t:%Y-%m-%d}" for t in grid.index], fontsize=8)
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], fontsize=8)
    for (i, j), value in np.ndenumerate(grid.to_numpy(float)):
        if np.isfinite(value):
            color = "white" if value > 0.6 else "black"
            ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=7, color=color)
    ax.set(
        title="Cohorts: share buying, by periods since signup",
        xlabel="periods since signup",
        ylabel="signup period (start)",
    )
    fig.colorbar(image, ax=ax, fraction=0.03)
    return fig


def migration_heatmap(matrix: TransitionMatrix, title: str) -> Figure:
    """Transition probabilities from one snapshot (rows) to the next (columns)."""
    states = list(matrix.states)
    probabilities = np.where(matrix.observed[:, None], matrix.probabilities, np.nan)
    size = 0.55 * len(states) + 2
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.add_subplot()
    image = ax.imshow(probabilities, cmap="Purples", vmin=0, vmax=1)
    ax.set_xticks(range(len(states)), states, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(states)), states, fontsize=8)
    for (i, j), value in np.ndenumerate(probabilities):
        if np.isfinite(value) and matrix.counts[i, j] > 0:
            color = "white" if value > 0.6 else "black"
            ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=7, color=color)
    ax.set(title=title, xlabel="to (now)", ylabel="from (previous snapshot)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    return fig


def segment_map_figure(points: pd.DataFrame) -> Figure:
    """Segments on relationship strength against value, sized by customers, coloured by
    churn risk, with an arrow from where they were in the previous run."""
    fig = Figure(figsize=(9, 6.5))
    ax = fig.add_subplot()
    shown = points[points["value"].notna()]
    sizes = 3000.0 * shown["customers"] / max(float(points["customers"].sum()), 1.0) + 30.0
    scatter = ax.scatter(
        shown["loyalty"],
        shown["value"],
        s=sizes,
        c=shown["churn_risk"],
        cmap="RdYlGn_r",
        vmin=0,
        vmax=1,
        alpha=0.8,
        edgecolors="black",
        linewidths=0.5,
    )
    for row in shown.itertuples():
        if np.isfinite(row.previous_loyalty) and np.isfinite(row.previous_value):
            ax.annotate(
                "",
                xy=(row.loyalty, row.value),
                xytext=(row.previous_loyalty, row.previous_value),
                arrowprops={"arrowstyle": "->", "color": "grey"},
            )
        ax.annotate(row.segment, (row.loyalty, row.value), fontsize=8, ha="center", va="bottom")
    # the quadrants split at the average customer, as segment_map's quadrant column does
    weights = points["customers"].where(points["value"].notna(), 0)
    mean_value = float(np.average(points["value"].fillna(0), weights=weights.clip(lower=1e-9)))
    mean_loyalty = float(np.average(points["loyalty"], weights=points["customers"]))
    ax.axvline(mean_loyalty, color="grey", linestyle=":")
    ax.axhline(mean_value, color="grey", linestyle=":")
    top = max(float(shown["value"].max()) * 1.1, mean_value * 2, 1.0)
    ax.set(xlim=(0, 100), ylim=(0, top))
    # each quadrant's advice at its top edge: the low-value segments crowd the bottom
    below = mean_value - 0.02 * top
    right, left = (mean_loyalty + 100) / 2, mean_loyalty / 2
    corners = {
        (right, 0.97 * top): "keep and reward",
        (left, 0.97 * top): "win back: fix the relationship",
        (right, below): "grow: cross-sell and upsell",
        (left, below): "serve at low cost",
    }
    for (x, y), label in corners.items():
        ax.text(x, y, label, ha="center", va="top", color="grey", fontsize=9)
    ax.set(
        title="Segment map: relationship strength against value",
        xlabel="loyalty index (0 weakest .. 100 strongest relationship)",
        ylabel="mean predicted value per customer",
    )
    fig.colorbar(scatter, ax=ax, fraction=0.03, label="mean churn probability")
    return fig


def equity_waterfall(equity: Equity, change: EquityChange | None) -> Figure:
    """Previous equity, what was lost, revalued, reactivated and new, and today's."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    if change is None:
        ax.bar(["equity"], [equity.total], color="tab:blue")
        ax.errorbar(
            [0], [equity.total], [[equity.total - equity.low], [equity.high - equity.total]],
            color="black", capsize=6,
        )  # fmt: skip
        ax.set_title("Customer equity (no earlier run to compare with)")
        return fig
    steps = [
        ("previous", change.previous, "total"),
        ("lost", -change.lost, "step"),
        ("value change", change.value_change, "step"),
        ("reactivated", change.reactivated, "step"),
        ("new", change.new, "step"),
        ("now", change.current, "total"),
    ]
    level = 0.0
    for i, (_label, amount, kind) in enumerate(steps):
        if kind == "total":
            ax.bar(i, amount, color="tab:blue")
            level = amount
        else:
            color = "tab:green" if amount >= 0 else "tab:red"
            ax.bar(i, amount, bottom=level, color=color)
            level += amount
        ax.text(i, max(level, 0), f"{amount:+,.0f}" if kind == "step" else f"{amount:,.0f}",
                ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(range(len(steps)), [s[0] for s in steps])
    ax.set(title="Customer equity: change since the previous run", ylabel="predicted value")
    return fig


def retention_curves(retention: pd.DataFrame) -> Figure:
    """Repeat-purchase retention per period (with its interval) and the estimated share
    still customers, overall and by ABC tier."""
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    overall = retention[retention["dimension"] == "overall"]
    ends = overall["period_end"]
    ax.plot(ends, overall["retention_rate"], marker="o", color="black", label="bought again")
    ax.fill_between(ends, overall["retention_low"], overall["retention_high"], alpha=0.2)
    ax.plot(
        ends,
        overall["survival_rate"],
        linestyle="--",
        color="black",
        label="still customers (est.)",
    )
    tiers = retention[retention["dimension"] == "abc_tier"]
    for tier, rows in tiers.groupby("grp"):
        ax.plot(rows["period_end"], rows["retention_rate"], marker=".", label=f"tier {tier}")
    ax.set(
        title="Retention per period",
        xlabel="end of period",
        ylabel="share of the previous period's buyers",
    )
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.autofmt_xdate()
    return fig


def build_report(
    frames: AnalyticsTables,
    equity: Equity,
    change: EquityChange | None,
    matrices: dict[str, TransitionMatrix],
    scores_as_of: datetime,
) -> Report:
    """The run's report: facts, the key tables, notes on the estimates and the figures
    (named ``segment_map``, ``equity_waterfall``, ...: their file names in MLflow)."""
    run = frames.run
    figures = [
        ("segment_map", png(segment_map_figure(frames.segment_map))),
        ("equity_waterfall", png(equity_waterfall(equity, change))),
        ("retention_curves", png(retention_curves(frames.retention))),
        ("cohort_heatmap", png(cohort_heatmap(frames.cohorts))),
        (
            "migration_rfm",
            png(migration_heatmap(matrices["rfm_segment"], "RFM segment migration")),
        ),
        ("migration_abc", png(migration_heatmap(matrices["abc_tier"], "ABC tier migration"))),
    ]
    metrics = run.metrics
    facts = {
        "as of": f"{run.as_of:%Y-%m-%d %H:%M} UTC",
        "periods": f"{run.periods} x {run.period}",
        "scores": f"{run.scores_run_id} (as of {scores_as_of:%Y-%m-%d %H:%M})",
        "customers": f"{int(metrics['customers']):,} known, "
        f"{int(metrics['active_customers']):,} active",
        "customer equity": f"{equity.total:,.0f} [{equity.low:,.0f}, {equity.high:,.0f}] (80%)",
        "run": run.run_id,
    }
    report = Report(f"Rapport customer-base analytics, {run.as_of:%Y-%m-%d}", facts)
    latest = frames.retention[
        frames.retention["period_end"] == frames.retention["period_end"].max()
    ]
    report.tables.append(
        ("Retention in the latest period", latest.drop(columns=["period_start", "period_end"]))
    )
    report.tables.append(("Segment map", frames.segment_map.set_index("segment")))
    report.tables.append(("Customer share (estimate)", frames.share))
    if change is not None:
        report.tables.append(
            ("Equity change since the previous run", pd.DataFrame([change.as_dict()]))
        )
    mix = frames.mix[frames.mix["kind"] == "rfm_segment"].copy()
    mix["column"] = np.where(
        mix["basis"] == "projected", "+" + mix["steps"].astype("Int64").astype(str), mix["basis"]
    )
    report.tables.append(
        (
            "RFM segment mix: now, projected, long run",
            mix.pivot(index="state", columns="column", values="share"),
        )
    )
    if len(frames.backtest):
        report.tables.append(("Backtest of the one-period projection", frames.backtest))
    report.figures.extend(figures)
    report.notes.extend(
        [
            "Retention: share of the previous period's buyers who bought again; 'still "
            "customers' is the mean MBG/NBD probability of being alive, an estimate.",
            "Customer share is an estimate: potential = the "
            f"{run.settings['wallet']['quantile']:.0%} quantile of the yearly spend of "
            f"customers with the same {', '.join(run.settings['wallet']['groups'])} (or "
            "the customer's own spend when higher), assuming the best of comparable "
            "customers spend nearly all their budget with us.",
            "The equity interval assumes each customer's value interval is right and "
            "customers vary independently; it leaves out errors common to everyone.",
            "Migration: segments and tiers are fitted at each snapshot, as each scoring "
            "run does; the projection repeats the latest period's flows.",
        ]
    )
    return report
