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
  of the same champion once recorded (``monitor_peers``), else against the holdout's
  (all in :mod:`training.monitor_partial`);
* both also per ABC tier and RFM segment (a group below ``min_rows`` never alerts);
  gaps and drops are judged as a change, beyond noise: a group's rate gap or coverage
  gap by how much it outgrew the champion's own gap for that group on its holdout
  (stored with the model version, :func:`group_figures`), and only by what exceeds the
  95% sampling interval of both (the group's size; Hanley-McNeil for AUCs), so a bias
  accepted at promotion or a small group's chance does not page; a tier or segment's
  gap warns at most (it moves with the season), the base's pages;
* **features**: per feature PSI and a two-sample statistic (KS D for numbers,
  Jensen-Shannon distance for categories, the chi-square p-value in the detail) between
  the reference stored with the churn champion (its holdout snapshot, see
  :func:`models.registry.load_reference`) and the latest scoring run's features (the
  sample it kept, else rebuilt as of its cutoff), and the share of each feature's
  information gone (``emptied``); the churn and value scores likewise against their
  references (:mod:`training.monitor_drift`, as is the skew below);
* **policy** (:mod:`training.policy_health`): the realised incremental value against the
  control group with its interval per period, per action realised against predicted
  uplift, exploration health and the NBA champion's off-policy estimate against what it
  realised (``no_data`` when no decision has a group and a known outcome yet).
* **skew**, live against batch: the latest :data:`~training.monitor_drift.SKEW_SAMPLES`
  feature vectors the service sampled (:mod:`features.tables.feature_samples`) rebuilt by
  the batch build for the same customers at the same instants; every mismatch beyond
  float tolerance counts, per feature and in all (any alerts by default: the two
  executions must agree).

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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.spec import FeatureSpec, default_spec
from features.tables import monitoring as tables
from features.tables.scores import RUNS as SCORE_RUNS
from features.tables.scores import (
    NoScoresError,
    RunInfo,
    latest_run,
    load_scores,
)
from features.timeutil import as_utc
from features.warehouse import connect, raw, table_names
from models import monitoring as stats
from models import registry
from models.alerts import Alerts, load_alerts
from models.metrics import calibration_curve, classification_metrics, regression_metrics
from rapport.settings import get_settings
from training import policy_health
from training.datasets import Progress, data_end, labels
from training.impact import catalog_of
from training.monitor_checks import GROUPS, NAN, SCORES, Checks, Holdout, subjects
from training.monitor_drift import (
    calendar_features,
    champion_reference,
    check_drift,
    check_skew_into,
    gain_shares,
    outbound_features,
    policy_features,
    run_features,
)
from training.monitor_partial import check_partial

EXPERIMENT = "rapport-monitoring"
#: the columns of ``scores`` the checks read
SCORE_COLUMNS = ("customer_id", *SCORES, "value_p10", "value_p50", "value_p90", *GROUPS)
#: why a tier or segment's matured gap (``rate_gap``, ``coverage_gap``: the only checks
#: judged per group; an AUC within a tier is lower than over the base by construction,
#: and calibration and total error over a few hundred rows are mostly noise) warns at
#: most, as its first-days ratio does; the base's pages
GROUP_GAP_WARNS = (
    "a group's gap warns at most (it moves with the season: on a stable world of 40,000 "
    "a segment's rate gap grew from its June holdout's +0.104 to +0.241 in November)"
)


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


def _churn_estimate(c: Checks, run: RunInfo, active: pd.DataFrame, ref_auc: float) -> None:
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
    holdout = Holdout("churn", run.versions.get("churn"))
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
    for subject, part in subjects(frame, columns):
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


def _churn_realised(c: Checks, run: RunInfo, active: pd.DataFrame, ref_auc: float) -> None:
    """Realised churn figures per subject. A subject's rate gap is judged by how much it
    outgrew the champion's own holdout gap for it (:func:`models.monitoring.grown`),
    beyond the sampling interval of both (the Bernoulli noise of its size); a tier or
    segment's warns at most (:data:`GROUP_GAP_WARNS`). The AUC drop over the base is
    judged as it is, its interval shown."""
    tag = f"scoring run {run.run_id} ({run.as_of:%Y-%m-%d})"
    holdout = Holdout("churn", run.versions.get("churn"))
    for subject, part in subjects(active, ["churned", "churn_probability"]):
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
        whole = subject == "all"
        c.add(
            "churn",
            "rate_gap",
            subject,
            excess,
            f"{tag}; realised {y.mean():.4f} vs predicted {p.mean():.4f} ({gap:+.4f}); "
            + (f"holdout gap {h_gap:+.4f} ({h_rows:.0f} rows)" if known else "no holdout gap")
            + f"; beyond the 95% noise interval +-{half:.4f}"
            + ("" if whole else f"; {GROUP_GAP_WARNS}"),
            n,
            cap=None if whole else "warn",
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


def _value_realised(c: Checks, run: RunInfo, scored: pd.DataFrame, ref_rho: float) -> None:
    """Realised value figures per subject. A subject's p10-p90 coverage gap to 0.80 is
    judged by how much it outgrew the champion's own holdout gap for it, beyond the
    binomial interval of both (a tier or segment's warns at most, :data:`GROUP_GAP_WARNS`);
    the Spearman drop over the base beyond the interval of both."""
    tag = f"scoring run {run.run_id} ({run.as_of:%Y-%m-%d})"
    holdout = Holdout("value", run.versions.get("value"))
    for subject, part in subjects(scored, list(VALUE_COLUMNS)):
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
        whole = subject == "all"
        c.add(
            "value",
            "coverage_gap",
            subject,
            excess,
            f"{tag}; p10-p90 coverage {coverage:.3f}, "
            + (f"holdout {h_cov:.3f} ({h_rows:.0f} rows)" if known else "no holdout figure")
            + f"; beyond the 95% binomial interval +-{half:.3f}"
            + ("" if whole else f"; {GROUP_GAP_WARNS}"),
            n,
            cap=None if whole else "warn",
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
    c = Checks(alerts)
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

    reference = champion_reference(latest.versions)
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
        holdout = reference if same else champion_reference(part.versions)
        if holdout is None:
            notes.append(
                f"scoring run {part.run_id}: no stored reference to judge its "
                f"{days} elapsed days against (retrain the champions)"
            )
        else:
            say(f"the {days} elapsed days of scoring run {part.run_id} against the holdout's")
            now = scored if part.run_id == latest.run_id else load_scores(db, part, SCORE_COLUMNS)
            check_partial(c, con, part, now, days, holdout, horizon)

    say("drift against the champions' references")
    if reference is None:
        notes.append(
            f"churn v{churn_version} has no stored reference (trained before references were "
            "kept): retrain it to monitor feature drift"
        )
    else:
        features = run_features(con, latest, scored, spec, say)
        current = features.merge(scored[["customer_id", *SCORES]], on="customer_id", how="left")
        importance = gain_shares(latest.versions)
        ordered = {n: importance.get(n, 0.0) for n in spec.names}
        check_drift(
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
    check_skew_into(c, con, spec, as_utc(as_of) if as_of is not None else None)

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
