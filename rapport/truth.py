"""The demo's ground truth, and the one evaluation module that compares with it.

The simulator (:mod:`rapport.demo_data`) knows what no warehouse can: at the truth cutoff,
every customer's true probability of not ordering in the horizon and true expected spend
(``truth_customers``), and the true effect of every action on every customer
(``truth_actions``). Production code never reads these tables: the training jobs take an
optional reference to judge their results against (:data:`training.jobs.Compare`,
:data:`training.nba.CompareNba`), and the demo, the notebook and the quality tests pass
the ones made here. So this module and the demo are the only code that knows the truth.

* :func:`ingest_demo`: a demo-data folder into the warehouse, truth tables included;
* :func:`compare_holdout`: churn and value on the holdout against the truth -- churn AUC
  next to the oracle's (the true probability scored against the same realised labels),
  value Spearman / MAE against the true expected spend, next to BG/NBD;
* :func:`compare_nba`: the learned policy valued with the true incremental revenue
  (against the oracle, random and single actions) and each learner's uplift against the
  true uplift, at the truth cutoff;
* :func:`load_simulated_truth`: the true value of a period played by ``rapport simulate``;
* :func:`truth_matrices`, :func:`truth_policy_values`, :func:`truth_uplift_mse`: the
  pieces, which the NBA quality test also uses directly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pandas as pd

from features.contract import NO_ACTION
from features.ingest import IngestReport, discover_files, ingest
from features.timeutil import as_utc
from models.metrics import (
    classification_metrics,
    linkage_metrics,
    ranking_metrics,
    regression_metrics,
)
from models.nba import NbaModel
from models.ope import encode_actions
from training.datasets import Progress
from training.jobs import Comparison
from training.nba import NbaComparison
from training.nba_data import Enrich, NbaData, customer_frame
from training.nba_evaluation import default_margin_rate

#: the simulator's tables beside the contract ones (loaded as they are, replaced each time)
TRUTH_TABLES = ("truth_customers", "truth_actions", "truth_identity")
#: prefix of the truth metrics in MLflow (``truth_oracle_auc``, ...)
KEY = "truth"


def ingest_demo(con: Any, folder: Path, now: datetime) -> IngestReport:
    """The contract files and the truth tables of a demo-data folder into the warehouse."""
    files = discover_files(folder, as_is=TRUTH_TABLES)
    return ingest(con, files, now, as_is=TRUTH_TABLES)


def load_truth(con: Any, as_of: datetime) -> pd.DataFrame | None:
    """The ``truth_customers`` rows at ``as_of``, or None when there are none."""
    if TRUTH_TABLES[0] not in con.list_tables():
        return None
    truth = con.table(TRUTH_TABLES[0])
    rows = con.execute(truth.filter(truth.as_of == ibis.literal(as_utc(as_of))))
    if rows.empty:
        return None
    rows["customer_id"] = rows["customer_id"].astype("string")
    return rows


def load_truth_actions(con: Any) -> pd.DataFrame | None:
    """The ``truth_actions`` table, or None."""
    if TRUTH_TABLES[1] not in con.list_tables():
        return None
    frame = con.execute(con.table(TRUTH_TABLES[1]))
    return frame if len(frame) else None


def compare_identity(con: Any) -> dict[str, float] | None:
    """Pairwise precision, recall and F1 of ``identity_clusters`` (``rapport resolve``)
    against ``truth_identity`` (which records are one person), or None when either is
    missing."""
    tables = set(con.list_tables())
    if not {"identity_clusters", TRUTH_TABLES[2]} <= tables:
        return None
    clusters = con.execute(con.table("identity_clusters")).set_index("customer_id")
    truth = con.execute(con.table(TRUTH_TABLES[2])).set_index("customer_id")
    return linkage_metrics(clusters["cluster_id"], truth["person_id"])


def simulated_truth_path(home: Path, start: datetime, end: datetime) -> Path:
    """Where ``rapport simulate`` writes the true value of the period [start, end)."""
    return Path(home) / "simulate" / f"truth_{start:%Y%m%d}-{end:%Y%m%d}.json"


def load_simulated_truth(home: Path, period: str | None = None) -> dict[str, Any] | None:
    """The true incremental value of a simulated period (``YYYYMMDD-YYYYMMDD``; default:
    the latest written), or None when ``rapport simulate`` never ran."""
    folder = Path(home) / "simulate"
    paths = sorted(folder.glob(f"truth_{period or '*'}.json"), key=lambda p: p.stat().st_mtime)
    if not paths:
        return None
    return dict(json.loads(paths[-1].read_text()))


def truth_cutoff(con: Any) -> datetime | None:
    """The truth cutoff (``truth_customers.as_of``), or None."""
    if TRUTH_TABLES[0] not in con.list_tables():
        return None
    t = con.table(TRUTH_TABLES[0])
    value = con.execute(t.as_of.max().name("v").as_table()).iloc[0, 0]
    return None if pd.isna(value) else as_utc(value)


# --------------------------------------------------------------------------- churn, value
def compare_holdout(
    con: Any,
    kind: str,
    as_of: datetime,
    rows: pd.DataFrame,
    y: np.ndarray,
    scores: Mapping[str, np.ndarray],
) -> Comparison | None:
    """:data:`training.jobs.Compare` against ``truth_customers`` at the holdout cutoff
    (None when the truth is at another cutoff or absent).

    Churn: every scorer and the oracle against the realised labels on the same rows.
    Value: every prediction against the true expected spend.
    """
    truth = load_truth(con, as_of)
    if truth is None:
        return None
    truth = truth.set_index("customer_id")
    notes: list[str] = []
    known = rows["customer_id"].isin(truth.index).to_numpy()
    if not known.all():
        notes.append(f"{int((~known).sum())} holdout customers have no ground truth")
    matched = truth.loc[rows["customer_id"][known]]
    if kind == "churn":
        metrics = {"oracle": classification_metrics(y[known], matched["p_no_order"].to_numpy())}
        metrics |= {name: ranking_metrics(y[known], s[known]) for name, s in scores.items()}
        title = "Ground truth: AUC of each scorer and of the true probability (oracle)"
    else:
        expected = matched["expected_spend"].to_numpy()
        metrics = {name: regression_metrics(expected, s[known]) for name, s in scores.items()}
        title = "Ground truth: predictions against the true expected spend"
    return Comparison("ground truth", KEY, metrics, truth_ratios(kind, metrics), title, notes)


def truth_ratios(kind: str, metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Churn: AUC / oracle AUC per scorer. Value: each scorer over BG/NBD for Spearman and
    MAE against the true expected spend (Spearman > 1 and MAE < 1 mean the scorer wins)."""
    if kind == "churn":
        oracle = metrics["oracle"]["auc"]
        return {
            f"{name}_auc_over_oracle": m["auc"] / oracle
            for name, m in metrics.items()
            if name != "oracle"
        }
    out: dict[str, float] = {}
    for name, m in metrics.items():
        if name == "btyd" or "btyd" not in metrics:
            continue
        base = metrics["btyd"]
        out[f"{name}_spearman_over_btyd"] = m["spearman"] / base["spearman"]
        out[f"{name}_mae_over_btyd"] = m["mae"] / base["mae"]
    return out


# --------------------------------------------------------------------------- next best action
def truth_matrices(
    truth_actions: pd.DataFrame, customer_ids: pd.Series, actions: Sequence[str]
) -> dict[str, np.ndarray]:
    """``[n, K]`` matrices of the truth columns for ``customer_ids`` x ``actions`` (NaN when
    the truth lacks a pair; ``consent_ok`` False then)."""
    out: dict[str, np.ndarray] = {}
    truth = truth_actions.assign(customer_id=truth_actions["customer_id"].astype(str))
    ids = customer_ids.astype(str).to_numpy()
    for column in (
        "incremental_revenue",
        "incremental_conversion",
        "consent_ok",
        "expected_revenue_treated",
        "p_convert_treated",
    ):
        if column not in truth.columns:
            continue
        wide = truth.pivot(index="customer_id", columns="action", values=column)
        wide = wide.reindex(index=ids, columns=list(actions))
        if column == "consent_ok":
            out[column] = wide.fillna(False).to_numpy(dtype=bool)
        else:
            out[column] = wide.to_numpy(dtype="float64")
    return out


@dataclass
class TruthValues:
    """True mean value per customer (incremental revenue x margin - cost) of policies."""

    values: dict[str, float]
    n: int
    margin_rate: float

    @property
    def best_single(self) -> tuple[str, float]:
        singles = {k: v for k, v in self.values.items() if k.startswith("always ")}
        name = max(singles, key=lambda k: singles[k])
        return name, singles[name]

    def ratios(self) -> dict[str, float]:
        oracle = self.values["oracle"]
        return {
            "learned_over_oracle": self.values["learned"] / oracle,
            "random_over_oracle": self.values["random"] / oracle,
            "best_single_over_oracle": self.best_single[1] / oracle,
        }

    def summary(self) -> str:
        name, value = self.best_single
        ratio = self.ratios()
        return (
            f"true value per customer ({self.n:,} customers, incremental revenue x "
            f"{self.margin_rate:g} - cost): learned {self.values['learned']:.3f} "
            f"({ratio['learned_over_oracle']:.1%} of the oracle {self.values['oracle']:.3f}), "
            f"random {self.values['random']:.3f}, best single action ({name}) {value:.3f}"
        )


def truth_policy_values(
    model: NbaModel,
    frame: pd.DataFrame,
    truth_actions: pd.DataFrame,
    margin_rate: float | None = None,
) -> TruthValues:
    """Learned greedy policy vs oracle, random and single actions, valued with the truth.

    Allowed actions: the catalog's screening (eligibility on the customer's features and
    scores, contact policy, cool-downs) and the truth's ``consent_ok``. The oracle picks
    the allowed action with the highest true value (doing nothing is always allowed, 0).
    """
    catalog = model.catalog
    margin = default_margin_rate(catalog) if margin_rate is None else margin_rate
    actions = catalog.ids
    truth = truth_matrices(truth_actions, frame["customer_id"], actions)
    cost = np.array([a.cost for a in catalog.actions])
    value = np.nan_to_num(truth["incremental_revenue"]) * margin - cost
    value[:, actions.index(NO_ACTION)] = 0.0
    result = model.arbitrate(frame)
    allowed = result.allowed & truth["consent_ok"]
    allowed[:, actions.index(NO_ACTION)] = True
    rows = np.arange(len(frame))
    chosen = encode_actions(result.best(), actions)
    # the learned policy's choice is allowed by the catalog; the truth's consent agrees with
    # the features' opt-in flags on the demo data, but never count a forbidden contact
    learned = np.where(allowed[rows, chosen], value[rows, chosen], 0.0)
    oracle = np.where(allowed, value, -np.inf).max(axis=1)
    values = {
        "learned": float(learned.mean()),
        "oracle": float(oracle.mean()),
        "random": float((np.where(allowed, value, 0.0).sum(1) / allowed.sum(1)).mean()),
    }
    for j, action in enumerate(actions):
        values[f"always {action}"] = float(np.where(allowed[:, j], value[:, j], 0.0).mean())
    return TruthValues(values, len(frame), margin)


def truth_uplift_mse(
    models: Mapping[str, NbaModel], frame: pd.DataFrame, truth_actions: pd.DataFrame
) -> pd.DataFrame:
    """MSE of each learner's conversion and revenue uplift against the truth."""
    rows = {}
    for name, model in models.items():
        pred = model.predict(frame)
        truth = truth_matrices(truth_actions, frame["customer_id"], pred.actions)
        conv, rev = truth["incremental_conversion"], truth["incremental_revenue"]
        ok = ~np.isnan(conv)
        rows[name] = {
            "mse_conversion": float(np.mean((pred.incremental_conversion[ok] - conv[ok]) ** 2)),
            "mse_revenue": float(np.mean((pred.incremental_revenue[ok] - rev[ok]) ** 2)),
        }
    return pd.DataFrame(rows).T


def compare_nba(
    con: Any,
    policy: NbaModel,
    learners: Mapping[str, NbaModel],
    data: NbaData,
    enrich: Enrich,
    progress: Progress,
) -> NbaComparison | None:
    """:data:`training.nba.CompareNba` against ``truth_actions``: every customer known at
    the truth cutoff, with the features and scores they had then (None without truth)."""
    truth = load_truth_actions(con)
    truth_at = truth_cutoff(con) if truth is not None else None
    if truth is None or truth_at is None:
        return None
    progress(f"ground truth: features and scores at the truth cutoff {truth_at:%Y-%m-%d}")
    frame = customer_frame(con, truth_at, enrich)
    values = truth_policy_values(policy, frame, truth)
    notes: list[str] = []
    if data.frame["decided_at"].max() >= pd.Timestamp(truth_at):
        notes.append(
            f"training decisions run past the truth cutoff {truth_at:%Y-%m-%d}; pass "
            f"--as-of {truth_at:%Y-%m-%d} for a strictly forward comparison"
        )
    if any(a.value_kind == "retained_value" for a in policy.catalog.actions):
        notes.append(
            "the catalog values retention actions by retained value; the truth counts "
            "14-day incremental revenue only, so the oracle ratio understates them"
        )
    table = truth_uplift_mse(learners, frame, truth)
    for name, model in learners.items():
        judged = values if model is policy else truth_policy_values(model, frame, truth)
        table.loc[name, "true_value_over_oracle"] = judged.ratios()["learned_over_oracle"]
    return NbaComparison(
        key=KEY,
        values=values.values,
        ratios=values.ratios(),
        summary=values.summary(),
        title="True value per customer at the truth cutoff",
        learners=table,
        learners_label="MSE against the true uplift",
        notes=notes,
    )
