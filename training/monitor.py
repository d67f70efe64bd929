"""``rapport monitor``: are the champions still right, and is their input still what they
were trained on?

:func:`run` reads the batch scoring runs of the warehouse (``scores`` / ``score_runs``)
as of a date (default: the end of the data) and checks:

* **churn**, on the latest scoring run whose horizon has matured (every label known):
  realised AUC, PR-AUC, Brier score, expected calibration error and the churn rate
  against the mean probability, against the holdout AUC the champion had at training;
  on the latest run (labels not known yet): the label-free estimate of the AUC and of the
  churn rate from the calibrated probabilities (CBPE, :func:`models.monitoring.cbpe_auc`)
  with a 90% interval; the matured run gets the estimate too, next to its realised AUC;
* **value**, on the matured run: MAE, RMSE, Spearman, top-decile capture, total error and
  the coverage of the p10-p90 interval (about 80% when calibrated) with a PIT histogram;
* **partly matured**, on the latest scoring run whose horizon has elapsed by at least
  ``partial_days`` (one scoring period) but not fully: what its customers did in the
  elapsed days (bought at least once, revenue) per unit of what the churn and value
  champions predicted for the horizon, against the same ratio over the same first days
  of the champion's holdout (``active_shortfall``, ``revenue_shortfall``: a change in
  behaviour caught a period after it, before the horizon matures), also per region;
  and each region against the other regions' customers of the same prediction in the
  same run (``active_vs_peers``: fewer buyers; ``complaints_vs_peers``: more complaints;
  one-sided tests, Holm-adjusted over the regions, :func:`models.monitoring.peer_shortfall`),
  which find a change in one region that the base dilutes and the holdout's capped sample
  cannot resolve; once earlier runs' figures of a region are recorded (``monitor_peers``)
  its gap is judged against its own pooled gap then (a difference in differences,
  :func:`models.monitoring.gap_vs_past`), so a region that always differs does not page;
  and the whole base's complaints per active customer against the windows of as many
  days before the run's cutoff (``complaints_vs_past``: a change everywhere, which the
  peers cancel);
  a tier, segment or region's first-days ratio warns at most (it moves with the season,
  between monthly runs too), judged against its own ratio in earlier partly matured runs
  of the same champion once recorded (``monitor_peers``), else against the holdout's;
* both also per ABC tier and RFM segment (a group below ``min_rows`` never alerts);
  gaps and drops are judged as a change, beyond noise: a group's rate gap or coverage
  gap by how much it outgrew the champion's own gap for that group on its holdout
  (stored with the model version, :func:`group_figures`), and only by what exceeds the
  95% sampling interval of both (the group's size; Hanley-McNeil for AUCs), so a bias
  accepted at promotion or a small group's chance does not page;
* **features**: per feature PSI and a two-sample statistic (KS D for numbers,
  Jensen-Shannon distance for categories, the chi-square p-value in the detail) between
  the reference stored with the churn champion (its holdout snapshot, see
  :func:`models.registry.load_reference`) and the latest scoring run's features rebuilt
  as of its cutoff; the churn and value scores likewise against their references;
* **policy** (:mod:`training.policy_health`): the realised incremental value against the
  control group with its interval per period, per action realised against predicted
  uplift, exploration health and the NBA champion's off-policy estimate against what it
  realised (``no_data`` when no decision has a group and a known outcome yet).
* **skew**, live against batch: the latest :data:`SKEW_SAMPLES` feature vectors the service
  sampled (:mod:`features.tables.feature_samples`) rebuilt by the batch build for the same
  customers at the same instants; every mismatch beyond float tolerance counts, per
  feature and in all (any alerts by default: the two executions must agree).

Each check is ``ok``, ``warn`` or ``alert`` by the thresholds (:mod:`models.alerts`).
Results are appended to ``monitor_checks`` / ``monitor_runs`` / ``monitor_curves`` /
``monitor_peers`` (:mod:`features.tables.monitoring`), logged as one MLflow run in the
``rapport-monitoring`` experiment, and written as a self-contained HTML report
(:mod:`training.monitor_report`).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa

from features.batch import build
from features.contract import CAMPAIGN_LOG, CUSTOMERS, INTERACTIONS, TABLES
from features.resolve import CHANGES, clusters_as_of, person_tables
from features.spec import FeatureSpec, default_spec
from features.tables import monitoring as tables
from features.tables.feature_samples import mismatches, read_samples
from features.tables.scores import RUNS as SCORE_RUNS
from features.tables.scores import (
    NoScoresError,
    RunInfo,
    latest_run,
    load_feature_sample,
    load_scores,
    sample_ids,
)
from features.timeutil import as_utc
from features.warehouse import connect, raw, table_names
from models import monitoring as stats
from models import registry
from models.alerts import LEVELS, Alerts, Level, load_alerts
from models.metrics import calibration_curve, classification_metrics, regression_metrics
from rapport.settings import get_settings
from training import policy_health
from training.datasets import data_end, labels
from training.impact import catalog_of

Progress = Callable[[str], None]
EXPERIMENT = "rapport-monitoring"
GROUPS = ("abc_tier", "rfm_segment")
GROUP_LABEL = {"abc_tier": "tier", "rfm_segment": "segment", "region": "region"}
SCORES = ("churn_probability", "value_mean")
#: the columns of ``scores`` the checks read
SCORE_COLUMNS = ("customer_id", *SCORES, "value_p10", "value_p50", "value_p90", *GROUPS)
NAN = float("nan")
#: ``emptied`` is judged only when the reference's informative share would give this many
#: informative rows in the run (below it, a rare feature empties by chance)
EMPTIED_MIN_ROWS = 100
#: checks judged per ABC tier and RFM segment (the others are shown there, not judged:
#: an AUC within a tier is lower than over the base by construction, and calibration
#: error and total error over a few hundred rows are mostly noise)
GROUP_JUDGED = {"rate_gap", "coverage_gap"}


@dataclass
class MonitorRun:
    """One monitoring run: its checks (``monitor_checks`` rows), curves and report."""

    run_id: str
    as_of: datetime
    checked_at: datetime
    frame: pd.DataFrame
    curves: pd.DataFrame
    #: role ("latest", "matured", "partial") -> scoring run id
    scoring_runs: dict[str, str]
    seconds: float = 0.0
    report: Path | None = None
    mlflow_run_id: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def checks(self) -> pd.DataFrame:
        """Every check, as appended to ``monitor_checks``."""
        return self.frame

    @property
    def alerts(self) -> pd.DataFrame:
        """The checks at level ``alert``."""
        return self.frame[self.frame["level"] == "alert"].reset_index(drop=True)

    @property
    def warnings(self) -> pd.DataFrame:
        return self.frame[self.frame["level"] == "warn"].reset_index(drop=True)

    def summary(self) -> str:
        """The compact table: every check with a threshold at subject ``all``, every
        score, and every warn / alert whatever its subject."""
        f = self.frame
        shown = f[
            f["threshold"].notna()
            & (
                (f["subject"] == "all")
                | f["subject"].str.startswith("score ")
                | (f["level"] != "ok")
            )
        ]
        lines = [
            f"monitor {self.run_id} as of {self.as_of:%Y-%m-%d}: "
            + ", ".join(f"{k} {v}" for k, v in self.scoring_runs.items()),
            f"{'level':<6} {'kind':<9} {'check':<19} {'subject':<28} {'value':>9} {'threshold':>9}",
        ]
        order = {"alert": 0, "warn": 1, "ok": 2}
        shown = shown.assign(_o=shown["level"].map(order)).sort_values(["_o", "kind", "check"])
        for row in shown.itertuples():
            lines.append(
                f"{row.level:<6} {row.kind:<9} {row.check:<19} {str(row.subject)[:28]:<28} "
                f"{row.value:>9.4f} {row.threshold:>9.4f}"
            )
        lines.append(
            f"{len(f)} checks: {len(self.alerts)} alert, {len(self.warnings)} warn "
            f"({self.seconds:.1f}s); all in the warehouse table `{tables.CHECKS}`"
        )
        if self.report:
            lines.append(f"report: {self.report}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


class _Checks:
    """Collects check rows and curve points for one monitoring run."""

    def __init__(self, alerts: Alerts) -> None:
        self.alerts = alerts
        self.rows: list[dict[str, Any]] = []
        self.curves: list[pd.DataFrame] = []
        #: the region peer checks' figures per region (``monitor_peers`` rows)
        self.peers: list[pd.DataFrame] = []

    def add(
        self,
        kind: str,
        check: str,
        subject: str,
        value: float,
        detail: str,
        rows: int | None = None,
        judged: bool = True,
        cap: Level | None = None,
    ) -> None:
        """A check judged by ``kind.check``'s threshold (``judged=False``: a figure shown
        and charted without one). A group smaller than ``min_rows`` is never above ok."""
        value = float(value)
        threshold, level = NAN, "ok"
        if judged:
            bound = self.alerts.threshold(kind, check)
            threshold = bound.alert
            level = bound.level(value)
            if cap is not None and LEVELS.index(level) > LEVELS.index(cap):
                level = cap
            if rows is not None and rows < self.alerts.min_rows:
                level = "ok"
                detail += f"; {rows} rows < min_rows {self.alerts.min_rows}: not judged"
        if rows is not None:
            detail = f"{detail}; rows {rows}" if detail else f"rows {rows}"
        self.rows.append(
            {
                "kind": kind,
                "check": check,
                "subject": subject,
                "value": value,
                "threshold": threshold,
                "level": level,
                "detail": detail,
            }
        )

    def curve(self, name: str, subject: str, scoring_run: str, frame: pd.DataFrame) -> None:
        self.curves.append(frame.assign(curve=name, subject=subject, scoring_run=scoring_run))


# --------------------------------------------------------------------------- scoring runs
def _scoring_runs(db: Any, as_of: datetime) -> list[RunInfo]:
    """Scoring runs with a cutoff at or before ``as_of``, oldest first."""
    if SCORE_RUNS not in table_names(db):
        raise NoScoresError("no scores in the warehouse yet: run `rapport score`")
    ids = db.execute(
        f"SELECT run_id FROM {SCORE_RUNS} WHERE as_of <= ? ORDER BY as_of, scored_at", [as_of]
    ).fetchall()
    if not ids:
        raise NoScoresError(
            f"no scoring run with a cutoff on or before {as_of:%Y-%m-%d}: run `rapport score`"
        )
    return [latest_run(db, r[0]) for r in ids]


def _holdout(kind: str, version: str | None, metric: str) -> float:
    """The champion's holdout figure at training (NaN when unknown)."""
    if version is None:
        return NAN
    try:
        return float(registry.run_metrics(kind, version).get(f"test_{metric}", NAN))
    except LookupError:
        return NAN


# --------------------------------------------------------------------------- churn
#: churn's rank metrics (AUC, PR-AUC, Brier) of a larger group are computed on a fixed
#: random sample of this many rows (the AUC's sampling error is then ~0.002); rates and
#: calibration error always use every row
METRIC_ROWS = 250_000


def _sampled(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(y) <= METRIC_ROWS:
        return y, s
    keep = np.random.default_rng(0).choice(len(y), METRIC_ROWS, replace=False)
    return y[keep], s[keep]


def _churn_estimate(c: _Checks, run: RunInfo, active: pd.DataFrame, ref_auc: float) -> None:
    """The label-free AUC and churn rate of the latest run; the estimate's drop from the
    holdout AUC is judged beyond the interval of both (the estimate's own and the
    holdout AUC's sampling interval)."""
    p = active["churn_probability"].to_numpy()
    est, low, high = stats.cbpe_auc(p)
    rate, rlow, rhigh = stats.rate_interval(p)
    tag = f"scoring run {run.run_id} ({run.as_of:%Y-%m-%d}); 90% interval"
    c.add("churn", "estimated_auc", "all", est, f"{tag} [{low:.4f}, {high:.4f}]", len(p), False)
    c.add("churn", "estimated_auc_low", "all", low, tag, len(p), False)
    c.add("churn", "estimated_auc_high", "all", high, tag, len(p), False)
    c.add("churn", "estimated_rate", "all", rate, f"{tag} [{rlow:.4f}, {rhigh:.4f}]", len(p), False)
    holdout = _Holdout("churn", run.versions.get("churn"))
    h_auc = holdout.get("all", "auc")
    h_auc = h_auc if np.isfinite(h_auc) else ref_auc
    h_pos = holdout.get("all", "positives")
    excess, half = stats.beyond_noise(
        max(h_auc - est, 0.0),
        ((high - low) / (2 * stats.Z90)) ** 2,
        stats.auc_variance(h_auc, h_pos, holdout.get("all", "rows") - h_pos),
    )
    c.add(
        "churn",
        "estimated_auc_drop",
        "all",
        excess,
        f"holdout AUC {h_auc:.4f} - estimate {est:.4f}; {tag} [{low:.4f}, {high:.4f}]; "
        f"beyond the 95% interval of the difference +-{half:.4f}",
        len(p),
    )


def _subjects(
    frame: pd.DataFrame, columns: list[str], groups: tuple[str, ...] = GROUPS
) -> list[tuple[str, pd.DataFrame]]:
    """The whole base, then each ABC tier and RFM segment (and any other of ``groups``):
    what realised checks report on, each named for people ("all", "tier A", "segment
    Champions", ...); only ``columns`` are carried (splitting every column of a million
    rows costs seconds)."""
    frame = frame[[*columns, *(g for g in groups if g not in columns)]]
    subjects: list[tuple[str, pd.DataFrame]] = [("all", frame)]
    for group in groups:
        for name, part in frame.groupby(group, observed=True):
            subjects.append((f"{GROUP_LABEL[group]} {name}", part))
    return subjects


def group_figures(kind: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Figures per subject (the base, each ABC tier and RFM segment) of scored rows with
    their outcomes: ``rows``, and for ``kind`` churn (``churned``, ``churn_probability``) the
    ``positives``, realised ``rate``, mean ``predicted`` probability and ``auc``; for value
    (``spend``, ``value_mean``, ``value_p10``, ``value_p90``) the p10-p90 ``coverage`` and
    ``spearman``. Training stores the holdout's (:func:`training.jobs.holdout_groups`)
    that the realised ones are judged against."""
    churn = kind == "churn"
    columns = ["churned", "churn_probability"] if churn else list(VALUE_COLUMNS)
    out = []
    for subject, part in _subjects(frame, columns):
        row: dict[str, Any] = {"subject": subject, "rows": len(part)}
        if churn and len(part):
            y = part["churned"].to_numpy(dtype="float64")
            p = part["churn_probability"].to_numpy(dtype="float64")
            auc = classification_metrics(y, p)["auc"] if np.unique(y).size == 2 else NAN
            row |= {"positives": y.sum(), "rate": y.mean(), "predicted": p.mean(), "auc": auc}
        elif len(part):
            y = part["spend"].to_numpy(dtype="float64")
            m = regression_metrics(y, part["value_mean"].to_numpy(dtype="float64"))
            inside = (y >= part["value_p10"]) & (y <= part["value_p90"])
            row |= {"coverage": float(np.mean(inside)), "spearman": m["spearman"]}
        out.append(row)
    return pd.DataFrame(out)


class _Holdout:
    """The champion's holdout figures per subject (:func:`group_figures`); a subject or a
    figure it lacks (a version trained before they were stored) reads as unknown."""

    def __init__(self, kind: str, version: str | None) -> None:
        frame = None
        if version is not None:
            try:
                frame = registry.load_reference(kind, version, registry.GROUPS_ARTIFACT)
            except LookupError:
                frame = None
        self.known = frame is not None
        self.figures = {} if frame is None else frame.set_index("subject").to_dict("index")

    def get(self, subject: str, figure: str) -> float:
        value = self.figures.get(subject, {}).get(figure, NAN)
        return float(value) if value is not None else NAN


def _churn_realised(c: _Checks, run: RunInfo, active: pd.DataFrame, ref_auc: float) -> None:
    """Realised churn figures per subject. A subject's rate gap is judged by how much it
    outgrew the champion's own holdout gap for it (:func:`models.monitoring.grown`),
    beyond the sampling interval of both (the Bernoulli noise of its size); the AUC drop
    over the base is judged as it is, its interval shown."""
    tag = f"scoring run {run.run_id} ({run.as_of:%Y-%m-%d})"
    holdout = _Holdout("churn", run.versions.get("churn"))
    for subject, part in _subjects(active, ["churned", "churn_probability"]):
        y = part["churned"].to_numpy(dtype="float64")
        p = part["churn_probability"].to_numpy(dtype="float64")
        n = len(part)
        if n == 0:
            continue
        gap = float(y.mean()) - float(p.mean())
        h_rate, h_rows = holdout.get(subject, "rate"), holdout.get(subject, "rows")
        h_gap = h_rate - holdout.get(subject, "predicted")
        known = np.isfinite(h_gap)
        excess, half = stats.beyond_noise(
            stats.grown(gap, h_gap),
            stats.rate_variance(p),
            stats.share_variance(h_rate, h_rows) if known else NAN,
        )
        c.add(
            "churn",
            "rate_gap",
            subject,
            excess,
            f"{tag}; realised {y.mean():.4f} vs predicted {p.mean():.4f} ({gap:+.4f}); "
            + (f"holdout gap {h_gap:+.4f} ({h_rows:.0f} rows)" if known else "no holdout gap")
            + f"; beyond the 95% noise interval +-{half:.4f}",
            n,
        )
        c.add(
            "churn",
            "calibration_error",
            subject,
            stats.expected_calibration_error(y, p),
            tag,
            n,
            subject == "all",
        )
        if np.unique(y).size < 2:
            continue
        positives = float(y.sum())
        y, p = _sampled(y, p)
        m = classification_metrics(y, p)
        for name in ("auc", "pr_auc", "brier"):
            c.add("churn", name, subject, m[name], tag, n, False)
        if subject != "all":
            continue
        h_auc = holdout.get(subject, "auc")
        h_auc = h_auc if np.isfinite(h_auc) else ref_auc
        h_pos = holdout.get(subject, "positives")
        # the realised drop itself is judged (its 95% interval is shown): on a base of a
        # few thousand the interval (+-0.04 at 1,500 customers) exceeds the alert
        # threshold, so netting it out would blind the check to a doubled churn hazard;
        # judged over the whole base only, it did not fire on 30 stable monthly runs
        _, half = stats.beyond_noise(
            0.0,
            stats.auc_variance(m["auc"], positives, n - positives),
            stats.auc_variance(h_auc, h_pos, h_rows - h_pos),
        )
        c.add(
            "churn",
            "auc_drop",
            subject,
            h_auc - m["auc"],
            f"{tag}; holdout AUC {h_auc:.4f}, realised {m['auc']:.4f}; 95% interval of the "
            f"difference +-{half:.4f}",
            n,
        )
        curve = calibration_curve(y, p).rename(
            columns={"predicted": "x", "observed": "y", "count": "n"}
        )
        c.curve("calibration", subject, run.run_id, curve.assign(expected=curve["x"]))


# --------------------------------------------------------------------------- value
VALUE_COLUMNS = ("spend", "value_mean", "value_p10", "value_p50", "value_p90")


def _value_realised(c: _Checks, run: RunInfo, scored: pd.DataFrame, ref_rho: float) -> None:
    """Realised value figures per subject. A subject's p10-p90 coverage gap to 0.80 is
    judged by how much it outgrew the champion's own holdout gap for it, beyond the
    binomial interval of both; the Spearman drop beyond the interval of both."""
    tag = f"scoring run {run.run_id} ({run.as_of:%Y-%m-%d})"
    holdout = _Holdout("value", run.versions.get("value"))
    for subject, part in _subjects(scored, list(VALUE_COLUMNS)):
        n = len(part)
        if n == 0:
            continue
        y = part["spend"].to_numpy(dtype="float64")
        coverage = float(np.mean((y >= part["value_p10"]) & (y <= part["value_p90"])))
        c.add("value", "coverage", subject, coverage, tag, n, False)
        h_cov, h_rows = holdout.get(subject, "coverage"), holdout.get(subject, "rows")
        known = np.isfinite(h_cov)
        excess, half = stats.beyond_noise(
            stats.grown(coverage - 0.8, h_cov - 0.8),
            stats.share_variance(0.8, n),
            stats.share_variance(h_cov, h_rows),
        )
        c.add(
            "value",
            "coverage_gap",
            subject,
            excess,
            f"{tag}; p10-p90 coverage {coverage:.3f}, "
            + (f"holdout {h_cov:.3f} ({h_rows:.0f} rows)" if known else "no holdout figure")
            + f"; beyond the 95% binomial interval +-{half:.3f}",
            n,
        )
        m = regression_metrics(y, part["value_mean"].to_numpy(dtype="float64"))
        for name in ("mae", "rmse", "spearman", "top_decile_capture"):
            c.add("value", name, subject, m[name], tag, n, False)
        c.add(
            "value",
            "total_error",
            subject,
            abs(m["total_error"]),
            f"{tag}; signed {m['total_error']:+.3f}",
            n,
            subject == "all",
        )
        if subject == "all":
            h_rho = holdout.get(subject, "spearman")
            h_rho = h_rho if np.isfinite(h_rho) else ref_rho
            excess, half = stats.beyond_noise(
                max(h_rho - m["spearman"], 0.0),
                stats.spearman_variance(m["spearman"], n),
                stats.spearman_variance(h_rho, h_rows),
            )
            c.add(
                "value",
                "spearman_drop",
                subject,
                excess,
                f"{tag}; holdout {h_rho:.4f}, realised {m['spearman']:.4f}; beyond the 95% "
                f"interval of the difference +-{half:.4f}",
                n,
            )
            pit = stats.pit_histogram(y, part["value_p10"], part["value_p50"], part["value_p90"])
            pit = pit.rename(columns={"share": "y"}).assign(x=np.arange(len(pit)), n=n)
            c.curve("pit", subject, run.run_id, pit.drop(columns="bin"))


# --------------------------------------------------------------------------- partly matured
#: check -> (kind, what customers did in the elapsed days, what was predicted for the
#: horizon): bought at least once against 1 - churn probability (the churn model's
#: expected buyers), revenue against the value model's mean
EARLY: dict[str, tuple[str, str, str]] = {
    "active_shortfall": ("churn", "bought", "expected_buyer"),
    "revenue_shortfall": ("value", "spend", "value_mean"),
}
#: a customer attribute the elapsed-days checks also split by (a change often hits one
#: region first)
ATTRIBUTE = "region"
#: check -> (kind, what customers did, per what, excess or shortfall) compared per value of
#: ATTRIBUTE with the other values' customers of the same churn risk (see :func:`_peers`):
#: fewer buyers per expected buyer, more complaints per customer (a rising dropout hazard
#: is dissatisfaction, which complains long before the missing purchases add up). Revenue
#: is left out: heavy-tailed, its normal z is not to be trusted on a few hundred
#: customers, and each family judged adds its false alarms
PEERS: dict[str, tuple[str, str, str, bool]] = {
    "active_vs_peers": ("churn", "bought", "expected_buyer", False),
    "complaints_vs_peers": ("churn", "complaints", "customer", True),
}
#: why a group's first-days ratio (a tier, segment or region; not the base) warns at most
GROUP_WARNS = (
    "a group's first-days ratio warns at most (it moves with the season, between runs "
    "too; a region's own change pages in active_vs_peers / complaints_vs_peers)"
)
#: the interactions counted as ``complaints`` in a run's elapsed days
COMPLAINT = "complaint"


def _elapsed(con: Any, lab: pd.DataFrame, cut: datetime, scored: pd.DataFrame) -> pd.DataFrame:
    """``scored`` customers active at ``cut`` with what they did in its first days
    (``bought``, ``spend``: ``lab``, :func:`~training.datasets.labels` over those days)
    and their ``region`` (from ``customers``, when it has one)."""
    lab = lab[(lab["as_of"] == pd.Timestamp(cut)) & lab["active"]]
    frame = scored.merge(lab[["customer_id", "orders_in_horizon", "spend"]], on="customer_id")
    frame = frame.assign(
        bought=(frame["orders_in_horizon"] > 0).astype("float64"),
        expected_buyer=1.0 - frame["churn_probability"].astype("float64"),
    )
    customers = con.table(CUSTOMERS.name)
    if ATTRIBUTE in customers.columns:
        attr = con.execute(customers.select("customer_id", ATTRIBUTE))
        attr["customer_id"] = attr["customer_id"].astype("string")
        frame = frame.drop(columns=ATTRIBUTE, errors="ignore").merge(
            attr, on="customer_id", how="left"
        )
    return frame


def _complaints(con: Any, cut: datetime, days: int) -> pd.DataFrame:
    """``customer_id, complaints``: complaint interactions in the ``days`` from ``cut``."""
    table = con.table(INTERACTIONS.name)
    start = pd.Timestamp(as_utc(cut))
    window = table.filter(
        (table.kind == COMPLAINT)
        & (table.occurred_at >= start)
        & (table.occurred_at < start + pd.Timedelta(days=days))
    )
    frame = con.execute(window.group_by("customer_id").aggregate(complaints=window.count()))
    frame["customer_id"] = frame["customer_id"].astype("string")
    return frame.astype({"complaints": "float64"})


def _holdout_scored(reference: pd.DataFrame) -> tuple[datetime, pd.DataFrame]:
    """The champion's holdout snapshot within its reference (the latest cutoff), with its
    scores and segments fitted on it as a scoring run fits them on its batch."""
    from features.segments import assign_segments, fit_segments

    cut = pd.Timestamp(reference["as_of"].max())
    rows = reference[reference["as_of"] == cut].reset_index(drop=True)
    rows["customer_id"] = rows["customer_id"].astype("string")
    try:
        segments = assign_segments(rows, fit_segments(rows))
        rows = rows.assign(**{g: segments[g] for g in GROUPS})
    except KeyError:  # a feature set without the RFM / ABC inputs: the base only
        rows = rows.assign(**{g: None for g in GROUPS})
    if "value_mean" not in rows.columns:  # no value champion: its check is skipped
        rows = rows.assign(value_mean=NAN)
    return cut.to_pydatetime(), rows


def _partial(
    c: _Checks,
    con: Any,
    run: RunInfo,
    scored: pd.DataFrame,
    days: int,
    reference: pd.DataFrame,
    horizon: int,
) -> None:
    """A scoring run whose horizon has elapsed by ``days`` (at least ``partial_days``, not
    all of it): what its active customers did in those days (bought, revenue) per unit of
    what the champions predicted for the whole horizon, against the same ratio over the
    same first days of the champion's holdout, per group its own (purchases do not spread
    evenly over a horizon: recency, season; so the expected share of the first days is
    measured, not a pro rata). A shortfall counts only beyond the 95% interval of both
    ratios (delta method over customers), as a share of the holdout's ratio; over the
    base, per ABC tier, RFM segment and region. A group the holdout has fewer than
    ``min_rows`` of has no measured first-days share: it is shown, not judged (another
    population's share is no expectation for it: a dormant segment buys a smaller share
    of its horizon in the first days than the whole base, and paged on every stable run).

    Only the base pages. A group's figures are kept (``monitor_peers``) and, once earlier
    runs of it are recorded (:func:`_own_history`), it is judged against its own pooled
    first days then (:func:`models.monitoring.gap_vs_past`), else against the holdout;
    either way it warns at most (:data:`GROUP_WARNS`): on the million-customer stable
    world a segment's ratio differs several-fold from the holdout's and moves 10-50%
    between monthly runs against a sampling interval of +-1-3%."""
    h_cut, h_rows = _holdout_scored(reference)
    starts = _past_windows(run.as_of, days, c.alerts.past_windows)
    early = labels(con, sorted({run.as_of, h_cut, *starts}), days)  # one pass over orders
    now = _elapsed(con, early, run.as_of, scored)
    now = now.merge(_complaints(con, run.as_of, days), on="customer_id", how="left")
    now = now.assign(complaints=now["complaints"].fillna(0.0), customer=1.0)
    then = _elapsed(con, early, h_cut, h_rows)
    groups = (*GROUPS, ATTRIBUTE) if ATTRIBUTE in now.columns else GROUPS
    columns = ["bought", "expected_buyer", "spend", "value_mean"]
    base = dict(_subjects(then, columns, groups))
    tag = (
        f"scoring run {run.run_id} ({run.as_of:%Y-%m-%d}), {days} of {horizon} days elapsed; "
        f"holdout {h_cut:%Y-%m-%d}"
    )
    history = {check: _own_history(c, raw(con), run, check, days) for check in EARLY}
    for subject, part in _subjects(now, columns, groups):
        if not len(part):
            continue
        past = base.get(subject)
        for check, (kind, done, predicted) in EARLY.items():
            if part[predicted].isna().all():
                continue
            ratio, var = stats.ratio_variance(part[done], part[predicted])
            known = part[done].notna() & part[predicted].notna()
            total = float(part.loc[known, predicted].sum())
            mine = pd.DataFrame(
                {
                    "group": [subject],
                    "rows": [int(known.sum())],
                    "observed": [ratio * total],
                    "expected": [total],
                    "variance": [var * total**2],
                }
            )
            c.peers.append(
                mine.assign(
                    scoring_run=run.run_id,
                    scoring_as_of=pd.Timestamp(as_utc(run.as_of)),
                    days=days,
                    check=check,
                )
            )
            figures = (
                f"{tag}; {done} {part[done].sum():,.1f} per predicted {predicted} "
                f"{total:,.1f} = {ratio:.3f}"
            )
            whole = subject == "all"
            # a group other than the base warns at most: on a stable world of a million its
            # first-days ratio moves 10-50% between monthly runs (season, campaign phase,
            # the segments refitted on each batch) against a sampling interval of +-1-3%,
            # as it differs from the holdout's of another season (bench.monitoring)
            cap: Level | None = None if whole else "warn"
            own = history[check]
            own = own[own["group"] == subject]
            if not whole and own["rows"].sum() >= c.alerts.min_rows:
                d = stats.gap_vs_past(mine, own).iloc[0]
                then = 1.0 - d["past_gap"]
                excess, half = stats.beyond_noise(
                    max(d["gap"] - d["past_gap"], 0.0), d["gap_sd"] ** 2, d["past_sd"] ** 2
                )
                dates = ", ".join(f"{pd.Timestamp(t):%Y-%m-%d}" for t in own["scoring_as_of"])
                c.add(
                    kind,
                    check,
                    subject,
                    excess / then if then > 0 else NAN,
                    f"{figures}, against its own {then:.3f} over the first days of "
                    f"{len(own)} earlier run(s) of the same champion ({dates}; "
                    f"scaled pro rata to {days} days); beyond the 95% interval +-{half:.3f}; "
                    f"{GROUP_WARNS}",
                    len(part),
                    cap=cap,
                )
                continue
            held = (  # holdout rows of the group the champion scored
                past[past[predicted].notna()] if past is not None else past
            )
            if held is None or len(held) < c.alerts.min_rows:
                c.add(
                    kind,
                    check,
                    subject,
                    NAN,
                    f"{tag}; no earlier run of it recorded, and the holdout has "
                    f"{0 if held is None else len(held)} rows of it < min_rows "
                    f"{c.alerts.min_rows}: its first-days share is not measured, "
                    "not enough data to judge",
                    len(part),
                    judged=False,
                )
                continue
            h_ratio, h_var = stats.ratio_variance(held[done], held[predicted])
            excess, half = stats.beyond_noise(max(h_ratio - ratio, 0.0), var, h_var)
            c.add(
                kind,
                check,
                subject,
                excess / h_ratio if h_ratio > 0 else NAN,
                f"{figures}, holdout {h_ratio:.3f} ({len(held)} rows); beyond the 95% "
                f"interval +-{half:.3f}"
                + ("" if whole else f"; no earlier run of it recorded; {GROUP_WARNS}"),
                len(part),
                cap=cap,
            )
    _complaints_vs_past(c, con, early, starts, days, now, tag)
    if ATTRIBUTE in now.columns:
        _peers(c, raw(con), run, days, now, tag)


def _own_history(c: _Checks, db: Any, run: RunInfo, check: str, days: int) -> pd.DataFrame:
    """The figures of ``check`` (:data:`EARLY`) recorded for up to ``peer_history`` earlier
    partly matured scoring runs (``monitor_peers``, :func:`~features.tables.monitoring.
    load_peer_history`) scored by the same champion as ``run`` (another model's
    predictions make another ratio), scaled pro rata to ``days`` elapsed days (monthly
    runs are judged after 28 to 31 days: exact for the expected spend and for rare
    buyers, within ``days / their days`` for frequent ones; ~3% between months)."""
    past = tables.load_peer_history(db, check, run.as_of, c.alerts.peer_history)
    if not len(past):
        return past
    kind = EARLY[check][0]
    same = {
        s
        for s in past["scoring_run"].unique()
        if latest_run(db, s).versions.get(kind) == run.versions.get(kind)
    }
    past = past[past["scoring_run"].isin(same)]
    scale = days / past["days"].astype("float64")
    return past.assign(observed=past["observed"] * scale, variance=past["variance"] * scale**2)


def _past_windows(cut: datetime, days: int, windows: int) -> list[datetime]:
    """The starts of the ``windows`` windows of ``days`` just before ``cut``."""
    return [cut - timedelta(days=days * k) for k in range(1, windows + 1)]


def _complaints_vs_past(
    c: _Checks,
    con: Any,
    lab: pd.DataFrame,
    starts: list[datetime],
    days: int,
    now: pd.DataFrame,
    tag: str,
) -> None:
    """The whole base's complaints per active customer in the elapsed days against the
    same figure over the windows of as many days just before the cutoff (``starts``; each
    window's active customers at its start in ``lab``, :func:`~training.datasets.labels`,
    their complaints in it; pooled). A change everywhere (a tripled dropout hazard:
    dissatisfaction complains long before the missing purchases add up) cancels between
    regions, and a first-days ratio against a holdout of another season cannot see the
    ~2% fewer buyers of one period (the season moves it more); the base's own recent past
    can see its complaints. The value is the rise beyond the 95% interval of both rates
    (delta method over customer-windows, taken as independent: approximate, since the
    same customers recur, so the stable worlds of bench.monitor_alarms are its test) as a
    share of the past rate; only a rise counts."""
    if not starts:
        return
    # an export whose interactions begin later has no complaints before: such windows
    # would read as quiet ones and make any complaints now look like a rise
    table = con.table(INTERACTIONS.name)
    first = con.execute(table.occurred_at.min())
    recorded = [s for s in starts if first is not None and pd.Timestamp(as_utc(s)) >= first]
    skipped = len(starts) - len(recorded)
    starts = recorded
    windows = len(starts)
    lab = lab[lab["active"]]
    past: list[pd.Series] = []
    for start in starts:
        ids = lab[lab["as_of"] == pd.Timestamp(as_utc(start))][["customer_id"]]
        if len(ids):
            found = ids.merge(_complaints(con, start, days), on="customer_id", how="left")
            past.append(found["complaints"].fillna(0.0))
    counts = pd.concat(past, ignore_index=True) if past else pd.Series(dtype="float64")
    before = f" ({skipped} window(s) before the first recorded interaction left out)"
    unjudged = None
    if len(counts) < c.alerts.min_rows:
        unjudged = (
            f"{len(counts)} active customer-windows in the {windows} windows of {days} days "
            f"before{before if skipped else ''}: not enough data to judge"
        )
    elif counts.sum() + now["complaints"].sum() == 0:
        unjudged = "no complaints recorded, now or before: nothing to judge"
    if unjudged is not None:
        c.add(
            "churn", "complaints_vs_past", "all", NAN, f"{tag}; {unjudged}", len(now), judged=False
        )
        return
    rate, var = stats.ratio_variance(now["complaints"], np.ones(len(now)))
    p_rate, p_var = stats.ratio_variance(counts, np.ones(len(counts)))
    excess, half = stats.beyond_noise(max(rate - p_rate, 0.0), var, p_var)
    c.add(
        "churn",
        "complaints_vs_past",
        "all",
        excess / p_rate if p_rate > 0 else NAN,
        f"{tag}; complaints per active customer {rate:.4f} ({now['complaints'].sum():,.0f} "
        f"complaints), {p_rate:.4f} in the {len(past)} windows of {days} days before "
        f"({counts.sum():,.0f} over {len(counts):,} active customer-windows, from "
        f"{min(starts):%Y-%m-%d}{before if skipped else ''}); "
        f"{rate / p_rate - 1 if p_rate > 0 else NAN:+.1%}; beyond the 95% interval "
        f"+-{half:.4f}",
        len(now),
    )


def _peers(c: _Checks, db: Any, run: RunInfo, days: int, now: pd.DataFrame, tag: str) -> None:
    """Each region's elapsed days against the other regions' customers of the same churn
    risk in the same run (:func:`models.monitoring.peer_shortfall`, strata = deciles of
    the churn probability; each check of :data:`PEERS`): a change in one region, diluted
    in the base and too small for the holdout's capped sample to show, stands out against
    its peers, while season, campaigns and a base-wide bias cancel.
    When earlier scoring runs' figures of the region were recorded (``monitor_peers``, up
    to ``peer_history`` runs), the gap is judged against the region's own pooled gap then
    (:func:`models.monitoring.gap_vs_past`, a difference in differences), so a region that
    always differs from its peers does not page every run; else against the peers alone.
    The value is -log10 of the one-sided p-value, Holm-adjusted over the regions judged
    (those with ``min_rows``), so the shipped 2.0 pages at a family-wise 1%. The figures
    are kept (:attr:`_Checks.peers`) for the next runs."""
    label = GROUP_LABEL[ATTRIBUTE]
    keep = c.alerts.peer_history
    for name, (kind, done, predicted, excess) in PEERS.items():
        rows = now[now[predicted].notna()]
        if done not in rows.columns or not len(rows) or rows[ATTRIBUTE].nunique() < 2:
            continue
        y = -rows[done] if excess else rows[done]
        risk = rows["churn_probability"]
        found = stats.peer_shortfall(y, rows[predicted], rows[ATTRIBUTE], by=risk)
        found[["observed", "expected"]] = found[["observed", "expected"]].abs()
        judged = found["rows"] >= c.alerts.min_rows
        c.peers.append(
            found[["group", "rows", "observed", "expected", "variance"]].assign(
                scoring_run=run.run_id,
                scoring_as_of=pd.Timestamp(as_utc(run.as_of)),
                days=days,
                check=name,
            )
        )
        past = tables.load_peer_history(db, name, run.as_of, keep)
        did = stats.gap_vs_past(found, past, excess).set_index("group")
        own = did["past_runs"].reindex(found["group"]).fillna(0).to_numpy() > 0
        p = found["p"].where(~own, did["p"].reindex(found["group"]).to_numpy())
        found["p_holm"] = stats.holm(p.where(judged))
        when = past.groupby("group")["scoring_as_of"].agg(list).to_dict() if len(past) else {}
        for r, mine in zip(found.itertuples(), own, strict=True):
            # -log10(1) is -0.0: + 0.0 makes it print as 0
            surprise = -np.log10(max(r.p_holm, 1e-300)) + 0.0 if np.isfinite(r.p_holm) else 0.0
            relative = r.observed / r.expected - 1 if r.expected else NAN
            detail = (
                f"{tag}; {done} {r.observed:,.1f} against {r.expected:,.1f} from customers "
                f"of the same churn risk in the other {label}s ({relative:+.1%})"
            )
            if mine:
                d = did.loc[r.group]
                dates = ", ".join(f"{pd.Timestamp(t):%Y-%m-%d}" for t in when[r.group])
                sign = 1.0 if excess else -1.0
                detail += (
                    f"; against its own gap in {int(d['past_runs'])} earlier run(s) ({dates}): "
                    f"{sign * d['past_gap']:+.1%} (sd {d['past_sd']:.1%}) then, "
                    f"{sign * d['gap']:+.1%} (sd {d['gap_sd']:.1%}) now (difference in "
                    f"differences); z {d['z']:.2f}, one-sided p {d['p']:.2g}"
                )
            else:
                detail += (
                    f"; against the peers of this run only (no earlier run of the {label} "
                    f"recorded); z {r.z:.2f}, one-sided p {r.p:.2g}"
                )
            detail += f", Holm over {int(judged.sum())} {label}s {r.p_holm:.2g}"
            c.add(kind, name, f"{label} {r.group}", surprise, detail, int(r.rows))


# --------------------------------------------------------------------------- drift
def _drift(
    c: _Checks,
    run: RunInfo,
    current: pd.DataFrame,
    reference: pd.DataFrame,
    categorical: set[str],
    importance: dict[str, float],
    policy: Collection[str] = (),
    calendar: Collection[str] = (),
) -> None:
    """PSI and a two-sample statistic per feature and score, and the share of each
    feature's information gone; drift of a feature the champions barely use (gain share
    under ``min_importance``), of a ``policy`` feature (:func:`policy_features`) or of a
    ``calendar`` one (:func:`calendar_features`) warns at most."""
    tag = f"scoring run {run.run_id} ({run.as_of:%Y-%m-%d}) vs the champion's reference"
    floor = c.alerts.features.min_importance
    for name in [*importance, *SCORES]:
        if name not in reference.columns or name not in current.columns:
            continue
        ref, cur = reference[name], current[name]
        if name not in categorical:
            ref = pd.to_numeric(ref, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            cur = pd.to_numeric(cur, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        is_score = name in SCORES
        subject = f"score {name}" if is_score else name
        share = importance.get(name, 1.0)
        minor = not is_score and (share < floor or name in policy or name in calendar)
        why = (
            "policy feature: the company's own actions or contacts"
            if name in policy
            else "calendar feature: drifts as the base ages"
            if name in calendar
            else "minor"
        )
        note = f"{tag}; gain share {share:.3f}" + (f" ({why}: warns at most)" if minor else "")
        if name in categorical:
            values = {"psi": stats.psi_categorical(ref, cur), "js": stats.js_distance(ref, cur)}
            note += f"; chi-square p {stats.chi2_test(ref, cur):.3g}"
        else:
            d, p_value = stats.ks_test(ref, cur)
            values = {"psi": stats.psi_numeric(ref, cur), "ks": d}
            note += f"; KS p {p_value:.3g}"
        for check, value in values.items():
            c.add("features", check, subject, value, note, len(cur), cap="warn" if minor else None)
        if not is_score:
            expected = stats.informative_share(ref) * len(cur)
            rare = expected < EMPTIED_MIN_ROWS
            note = f"{tag}; {expected:.0f} informative rows expected" + (
                f" (< {EMPTIED_MIN_ROWS}: too rare to judge)" if rare else ""
            )
            cap: Level | None = "warn" if name in policy else None
            if cap is not None:
                note += f" ({why}: warns at most)"
            value = stats.emptied(ref, cur)
            c.add("features", "emptied", subject, value, note, len(cur), not rare, cap)


def _reference(versions: dict[str, str]) -> pd.DataFrame | None:
    """The reference stored with the churn champion ``versions`` name, with the value
    champion's scores of the same rows (``value_mean``) when it has one; None when the
    churn version has none."""
    churn, value = versions.get("churn"), versions.get("value")
    reference = registry.load_reference("churn", churn) if churn else None
    value_ref = registry.load_reference("value", value) if value else None
    if reference is not None and value_ref is not None:
        reference = with_value(reference, value_ref)
    return reference


def with_value(reference: pd.DataFrame, value_ref: pd.DataFrame) -> pd.DataFrame:
    """``reference`` with the value reference's ``value_mean`` of the same customer and
    cutoff (NaN where it has none): the two references are sampled apart (champions from
    different training runs, or sampled sets), so rows are matched, never aligned."""
    keys = ["customer_id", "as_of"]
    values = value_ref[[*keys, "value_mean"]].drop_duplicates(keys)
    return reference.drop(columns="value_mean", errors="ignore").merge(values, on=keys, how="left")


def _run_features(
    con: Any, run: RunInfo, scored: pd.DataFrame, spec: FeatureSpec, say: Progress
) -> pd.DataFrame:
    """The features the scoring run kept (``score_features``: a fixed sample of
    :data:`~features.tables.scores.FEATURE_SAMPLE_ROWS` customers); for a run scored
    before runs kept them (or with another feature set), the same customers' features
    rebuilt as of its cutoff."""
    kept = load_feature_sample(raw(con), run.run_id, spec.names)
    if kept is not None and run.feature_set == spec.version:
        say(f"features scoring run {run.run_id} kept ({len(kept):,} customers)")
        return kept
    ids = sample_ids(scored["customer_id"])
    say(f"rebuilding the features of {len(ids):,} customers as of {run.as_of:%Y-%m-%d}")
    keep = ibis.memtable(pa.table({"customer_id": pa.array(list(ids), pa.string())}))
    only = {name: con.table(name).semi_join(keep, "customer_id") for name in TABLES}
    return build(con, run.as_of, spec, only)


def calendar_features(spec: FeatureSpec) -> set[str]:
    """Features that grow with the calendar by construction in any stable world: tenure
    and the days since the first event over all history (the base ages between the
    reference and a run months later: PSI 0.38 on ``days_since_first_order`` in a stable
    world of 20,000 customers, more as the runs get older), so their drift warns at most;
    a feed that stops still shows in ``emptied``."""
    names = {a.name for a in spec.attributes if a.kind == "tenure_days"}
    names |= {a.name for a in spec.aggs if a.agg == "days_since_first" and a.days is None}
    return names


def outbound_features(spec: FeatureSpec, channels: Collection[str]) -> set[str]:
    """Interaction counts of one of ``channels`` (those the company's actions contact
    customers on, :attr:`models.catalog.Action.channel`) that do not keep to inbound
    contacts: they count the company's own outbound contacts too (a campaign's emails
    sent, its service callbacks), which follow the campaign calendar. A 30-day window
    before a cutoff that a month's wave falls after has none of them: on the simulator
    ``call_contacts_30d`` loses half its non-zero values then (``emptied`` 0.52-0.57 at
    20,000 customers) with nothing broken. Like :func:`policy_features` their drift and
    ``emptied`` warn at most."""
    wanted = set(channels) - {"none"}
    names: set[str] = set()
    for a in spec.aggs:
        if a.source != INTERACTIONS.name:
            continue
        conds = {(c.column, c.op): c.value for c in a.where}
        if conds.get(("direction", "==")) == "inbound":
            continue
        if conds.get(("channel", "==")) in wanted:
            names.add(a.name)
    return names


def policy_features(spec: FeatureSpec) -> set[str]:
    """Features of the company's own actions (from the campaign log, and ratios of them
    only): they follow the campaign calendar and the policy, which the company sets, so
    their drift is worth knowing (it warns) but is no failure of data or model."""
    names = {a.name for a in spec.aggs if a.source == CAMPAIGN_LOG.name}
    for d in spec.derived:
        if {n for n, _ in (*d.numerator, *d.denominator)} <= names:
            names.add(d.name)
    return names


def _importance(versions: dict[str, str]) -> dict[str, float]:
    """Each feature's largest share of gain over the churn and value champions (the
    features every champion reads, in spec order)."""
    shares: dict[str, float] = {}
    for kind in ("churn", "value"):
        if kind not in versions:
            continue
        model, _ = registry.load_model(kind, version=versions[kind])
        gain = model.feature_importance()
        total = float(gain.sum()) or 1.0
        for name, value in gain.items():
            shares[str(name)] = max(shares.get(str(name), 0.0), float(value) / total)
    return shares


# --------------------------------------------------------------------------- skew
#: sampled live vectors rebuilt per monitoring run, the latest first (one batch build
#: over the sampled customers only per distinct instant)
SKEW_SAMPLES = 500


def _skew(c: _Checks, con: Any, spec: FeatureSpec, until: datetime | None) -> None:
    """Rebuild the sampled live feature vectors in batch, as of their exact instants (the
    batch build as of t reads events strictly before t, as the live evaluator does), and
    count the disagreements per feature; a sampled customer the batch build does not
    know at that instant is a mismatch too."""
    samples = read_samples(raw(con), until, SKEW_SAMPLES)
    current = samples[samples["feature_set"] == spec.version]
    other = len(samples) - len(current)
    counts: dict[str, int] = {}
    example: dict[str, str] = {}
    bad, missing = 0, 0
    for instant, group in current.groupby("computed_at", sort=True):
        ids = [str(i) for i in group["customer_id"].unique()]
        when = pd.Timestamp(instant).to_pydatetime()
        only = _persons_of(con, ids, when)
        batch = build(con, when, spec, only).set_index("customer_id")
        for row in group.itertuples():
            if row.customer_id not in batch.index:
                bad, missing = bad + 1, missing + 1
                continue
            rebuilt = batch.loc[row.customer_id].to_dict()
            wrong = mismatches(row.features, rebuilt, spec.names)
            bad += bool(wrong)
            for name in wrong:
                counts[name] = counts.get(name, 0) + 1
                example.setdefault(
                    name,
                    f"e.g. sample {row.sample_id} at {when.isoformat()}: live "
                    f"{row.features.get(name)!r}, batch {rebuilt.get(name)!r}",
                )
    worst = max(counts, key=lambda n: counts[n]) if counts else None
    detail = (
        f"{len(current)} sampled live vectors rebuilt in batch"
        + (f"; {other} of another feature set skipped" if other else "")
        + (f"; {missing} customers unknown to the batch build" if missing else "")
        + (f"; worst feature {worst} ({counts[worst]})" if worst else "")
    )
    c.add("skew", "samples", "all", len(current), detail, judged=False)
    c.add("skew", "mismatches", "all", bad, detail)
    for name, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        c.add("skew", "mismatches", name, count, f"of {len(current)} samples; {example[name]}")


def _persons_of(con: Any, ids: list[str], when: datetime) -> dict[str, Any]:
    """The contract tables of the sampled customers as their live records hold them at
    ``when``: once ``rapport resolve`` has run, a cluster id's record holds every member's
    events and the earliest signup (:func:`features.resolve.person_tables`, the clusters
    known at ``when``), so the rebuild merges them too. The Spark loader writes records per
    customer id (no merge yet): with that engine the rebuild does not merge either."""
    source = {name: con.table(name) for name in TABLES}
    if CHANGES not in table_names(raw(con)) or get_settings().engine == "spark":
        return {name: t.filter(t.customer_id.isin(ids)) for name, t in source.items()}
    return person_tables(source, clusters_as_of(con, when, ids), ids, keep_members=True)


def check_skew(
    con: Any,
    alerts: Alerts | None = None,
    spec: FeatureSpec | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """The skew checks alone (``kind``, ``check``, ``subject``, ``value``, ``level``, ...),
    as :func:`run` records them."""
    c = _Checks(alerts or load_alerts())
    _skew(c, con, spec or default_spec(), until)
    return pd.DataFrame(c.rows)


# --------------------------------------------------------------------------- the job
def _metric_name(kind: str, check: str, subject: str) -> str:
    return re.sub(r"[^0-9A-Za-z_\-./ ]", "_", f"{kind}.{check}.{subject}")


def _log_mlflow(result: MonitorRun, html: str) -> str:
    """One run in the monitoring experiment: every finite check value as a metric, the
    report and the checks as artifacts."""
    import mlflow

    from models.registry import quiet
    from training import tracking

    experiment_id = tracking.configure(EXPERIMENT)
    nested = mlflow.active_run() is not None
    with (
        quiet(),
        mlflow.start_run(
            experiment_id=experiment_id, run_name=result.run_id, nested=nested
        ) as active,
    ):
        mlflow.set_tags(
            {
                "rapport.monitor_run": result.run_id,
                **{f"rapport.scoring_run.{k}": v for k, v in result.scoring_runs.items()},
            }
        )
        f = result.frame[np.isfinite(result.frame["value"])]
        mlflow.log_metrics(
            {_metric_name(r.kind, r.check, r.subject): float(r.value) for r in f.itertuples()}
            | {"alerts": float(len(result.alerts)), "warnings": float(len(result.warnings))}
        )
        mlflow.log_text(html, "monitor_report.html")
        mlflow.log_text(result.frame.to_csv(index=False), "monitor_checks.csv")
        return str(active.info.run_id)


def run(
    as_of: datetime | str | None = None,
    *,
    con: Any = None,
    thresholds: Alerts | Path | str | None = None,
    spec: FeatureSpec | None = None,
    report_dir: Path | None = None,
    log_to_mlflow: bool = True,
    progress: Progress | None = None,
) -> MonitorRun:
    """Monitor the scoring runs of the warehouse as of ``as_of`` (default: the end of the
    data) and record the result; see the module docstring for what is checked.

    ``con``: the warehouse (Ibis DuckDB backend, read-write; default: the workspace's).
    ``thresholds``: :class:`Alerts`, a YAML path, or None for the shipped defaults.
    The report goes to ``report_dir`` (default ``<home>/monitoring``).
    """
    say = progress or (lambda _: None)
    start = time.perf_counter()
    alerts = thresholds if isinstance(thresholds, Alerts) else load_alerts(thresholds)
    settings = get_settings()
    own = con is None
    if own:
        con = connect(settings.warehouse_path)
    try:
        return _run(
            con, as_of, alerts, spec or default_spec(), report_dir, log_to_mlflow, say, start
        )
    finally:
        if own:
            con.disconnect()


def _run(
    con: Any,
    as_of: datetime | str | None,
    alerts: Alerts,
    spec: FeatureSpec,
    report_dir: Path | None,
    log_to_mlflow: bool,
    say: Progress,
    start: float,
) -> MonitorRun:
    from training.monitor_report import render

    settings = get_settings()
    horizon = settings.horizon_days
    db = raw(con)
    cutoff = as_utc(as_of) if as_of is not None else data_end(con)
    runs = _scoring_runs(db, cutoff)
    latest = runs[-1]
    matured = [r for r in runs if r.as_of + timedelta(days=horizon) <= cutoff]
    c = _Checks(alerts)
    roles = {"latest": latest.run_id}
    notes: list[str] = []
    churn_version = latest.versions.get("churn")
    ref_auc = _holdout("churn", churn_version, "auc")

    say(f"reading scoring run {latest.run_id} ({latest.rows:,} customers)")
    scored = load_scores(db, latest, SCORE_COLUMNS)
    label_cut = [latest.as_of] + ([matured[-1].as_of] if matured else [])
    say("labels (active customers; realised outcomes of matured runs)")
    lab = labels(con, sorted(set(label_cut)), horizon)
    lab_latest = lab[lab["as_of"] == pd.Timestamp(latest.as_of)]
    active = scored.merge(lab_latest[lab_latest["active"]][["customer_id"]], on="customer_id")
    _churn_estimate(c, latest, active, ref_auc)

    if matured:
        done = matured[-1]
        roles["matured"] = done.run_id
        say(f"realised outcomes of scoring run {done.run_id} ({done.as_of:%Y-%m-%d} + {horizon}d)")
        old = scored if done.run_id == latest.run_id else load_scores(db, done, SCORE_COLUMNS)
        lab_done = lab[lab["as_of"] == pd.Timestamp(done.as_of)]
        joined = old.merge(
            lab_done[["customer_id", "active", "churned", "spend"]], on="customer_id"
        )
        old_active = joined[joined["active"]]
        if done.run_id != latest.run_id:
            est, low, high = stats.cbpe_auc(old_active["churn_probability"].to_numpy())
            c.add(
                "churn",
                "estimated_auc_matured",
                "all",
                est,
                f"scoring run {done.run_id}; 90% interval [{low:.4f}, {high:.4f}]",
                len(old_active),
                False,
            )
        _churn_realised(c, done, old_active, _holdout("churn", done.versions.get("churn"), "auc"))
        _value_realised(c, done, joined, _holdout("value", done.versions.get("value"), "spearman"))
    else:
        notes.append(
            f"no scoring run has a matured {horizon}-day horizon by {cutoff:%Y-%m-%d}: "
            "churn shows its label-free estimate only, value nothing realised yet"
        )

    reference = _reference(latest.versions)
    partial = [
        r
        for r in runs
        if r.as_of + timedelta(days=horizon) > cutoff
        and (cutoff - r.as_of).days >= alerts.partial_days
    ]
    if partial:
        part = partial[-1]
        roles["partial"] = part.run_id
        days = (cutoff - part.as_of).days
        same = part.versions == latest.versions
        holdout = reference if same else _reference(part.versions)
        if holdout is None:
            notes.append(
                f"scoring run {part.run_id}: no stored reference to judge its "
                f"{days} elapsed days against (retrain the champions)"
            )
        else:
            say(f"the {days} elapsed days of scoring run {part.run_id} against the holdout's")
            now = scored if part.run_id == latest.run_id else load_scores(db, part, SCORE_COLUMNS)
            _partial(c, con, part, now, days, holdout, horizon)

    say("drift against the champions' references")
    if reference is None:
        notes.append(
            f"churn v{churn_version} has no stored reference (trained before references were "
            "kept): retrain it to monitor feature drift"
        )
    else:
        features = _run_features(con, latest, scored, spec, say)
        current = features.merge(scored[["customer_id", *SCORES]], on="customer_id", how="left")
        importance = _importance(latest.versions)
        ordered = {n: importance.get(n, 0.0) for n in spec.names}
        _drift(
            c,
            latest,
            current,
            reference,
            set(spec.categorical),
            ordered,
            policy_features(spec)
            | outbound_features(spec, {a.channel for a in catalog_of(db).actions}),
            calendar_features(spec),
        )

    say("policy health: treated against control, exploration, off-policy estimate")
    policy_health.check(c, db, cutoff)
    say("live/batch skew of the sampled live feature vectors")
    _skew(c, con, spec, as_utc(as_of) if as_of is not None else None)

    checked_at = datetime.now(UTC)
    run_id = checked_at.strftime("mr-%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
    frame = pd.DataFrame(c.rows).assign(run_id=run_id, checked_at=pd.Timestamp(checked_at))
    frame = frame[list(tables.CHECK_COLUMNS)]
    curves = (
        pd.concat(c.curves, ignore_index=True).assign(
            run_id=run_id, checked_at=pd.Timestamp(checked_at)
        )
        if c.curves
        else pd.DataFrame(columns=list(tables.CURVE_COLUMNS))
    )
    result = MonitorRun(run_id, cutoff, checked_at, frame, curves, roles, notes=notes)
    history = tables.load_checks(db)
    html = render(result, history, _curve_history(db, curves))
    folder = report_dir or settings.home / "monitoring"
    folder.mkdir(parents=True, exist_ok=True)
    result.report = folder / f"{run_id}.html"
    result.report.write_text(html, encoding="utf-8")
    if log_to_mlflow:
        say("logging to MLflow")
        result.mlflow_run_id = _log_mlflow(result, html)
    result.seconds = time.perf_counter() - start
    tables.record(
        db,
        {
            "run_id": run_id,
            "checked_at": checked_at,
            "as_of": cutoff,
            "scoring_runs": ",".join(f"{k}={v}" for k, v in roles.items()),
            "checks": len(frame),
            "warnings": len(result.warnings),
            "alerts": len(result.alerts),
            "seconds": result.seconds,
            "report": str(result.report),
            "mlflow_run_id": result.mlflow_run_id,
        },
        frame,
        curves,
        pd.concat(c.peers, ignore_index=True).assign(
            run_id=run_id, checked_at=pd.Timestamp(checked_at)
        )
        if c.peers
        else None,
    )
    return result


def _curve_history(db: Any, current: pd.DataFrame) -> pd.DataFrame:
    have = table_names(db)
    if tables.CURVES not in have:
        return current
    past = db.execute(f"SELECT * FROM {tables.CURVES}").to_arrow_table().to_pandas()
    return pd.concat([past, current], ignore_index=True) if len(current) else past
