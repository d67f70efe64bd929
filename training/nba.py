"""Next best action: the training set from the campaign log, the fit, off-policy evaluation,
MLflow registration as ``nba`` and the promotion gate.

**Training set.** Every ``campaign_log`` decision with a known outcome (``outcome`` not
null) is one row: the logged action, its propensity, the outcome and the revenue, joined
with the customer's features as of the start of the decision's week (``decided_at``
floored to Monday 00:00 UTC: strictly before the decision, so nothing of the response
leaks in, and one feature build per week instead of one per decision), the churn and
value champions' scores at that cutoff and the RFM / ABC segments fitted on that week's
snapshot -- so the catalog's eligibility rules can be evaluated exactly as the service
would have. Time split: the latest decision weeks (at least ``holdout_fraction`` of the
decisions) are the holdout; the uplift models never see them.

**Learner.** A cross-fitted doubly-robust (DR) learner with LightGBM
(:class:`models.uplift.UpliftModel`). Why DR: the log is not a randomised trial (the
logging policy's propensities depend on region, preferred channel and recency), so a
T-learner mixes each action's effect with who received it. On the synthetic benchmark of
``tests/models/test_uplift.py`` the DR learner's uplift MSE is 0.0016 against 0.0066 for
the T-learner and 0.0173 for the naive difference; every run re-checks this on its own
data (Qini / AUUC per action on the holdout for DR, T and IPW-T, and when the demo's
``truth_actions`` exist, the MSE against the true uplift) and logs the comparison.

**Reward** (off-policy evaluation and the gate): ``revenue x margin_rate - cost`` of the
logged action, per decision -- the margin earned on the response revenue minus what the
contact cost. ``margin_rate`` is one rate for every action (default: the mean margin rate
of the catalog's actions other than the control), so that the control's revenue counts
like everyone else's. Policies are compared by their estimated mean reward per decision
(IPS, self-normalised IPS, doubly robust with the candidate's outcome models as reward
model; 95% bootstrap intervals) for the candidate (greedy), the current champion
(greedy), uniform random over the allowed actions and every single action for everyone
(where allowed, else no action).

**Gate.** The first ``nba`` model becomes ``@champion``; a later one only if its DR lower
bound beats the champion's DR estimate on the candidate's holdout (logged with the run),
otherwise it is ``@challenger`` with the reason.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from features.batch import as_utc, build
from features.contract import NO_ACTION
from features.segments import fit_segments
from features.spec import FeatureSpec, default_spec
from models.catalog import CHURN_FIELD, Catalog, default_catalog, parse_catalog
from models.nba import NbaModel
from models.ope import (
    OPEResult,
    encode_actions,
    evaluate_policy,
    random_policy,
    single_action_policy,
)
from models.policy import Arbitration
from models.uplift import METHODS, Method, UpliftModel, auuc, qini_auc, uplift_curve
from models.value import OUTPUT_COLUMNS
from rapport.settings import get_settings
from training import plots, tracking
from training.datasets import Progress, data_end, fingerprint, lineage, silent
from training.jobs import PromotionResult
from training.report import Report
from training.tracking import CHALLENGER, CHAMPION, HOLDOUT_TAG

NBA = "nba"
#: scores the uplift models read next to the spec's features
SCORE_FEATURES = (CHURN_FIELD, "value_mean")
#: the columns a bring-your-own table needs besides the features
LOG_COLUMNS = ("action", "propensity", "outcome", "revenue")
HOLDOUT_FILE = "holdout.parquet"
POLICY_ORDER = ("candidate", "champion", "random")

Enrich = Callable[[pd.DataFrame, datetime], pd.DataFrame]


# --------------------------------------------------------------------------- data
def week_start(values: pd.Series) -> pd.Series:
    """Timestamps floored to Monday 00:00 UTC of their week."""
    ts = pd.to_datetime(values, utc=True)
    day = ts.dt.floor("D")
    return (day - pd.to_timedelta(day.dt.day_of_week, unit="D")).astype("datetime64[us, UTC]")


def logged_decisions(con: Any, as_of: datetime | None = None) -> pd.DataFrame:
    """Decisions with a known outcome decided before ``as_of`` (default: all)."""
    log = con.table("campaign_log")
    known = log.filter(log.outcome.notnull())
    if as_of is not None:
        import ibis

        known = known.filter(log.decided_at < ibis.literal(as_utc(as_of)))
    frame = con.execute(
        known.select(
            "decision_id", "customer_id", "decided_at", "action", "propensity", "outcome", "revenue"
        )
    )
    if frame.empty:
        raise ValueError(
            "the campaign log holds no decision with a known outcome"
            + (f" before {as_utc(as_of):%Y-%m-%d}" if as_of else "")
            + "; the NBA policy learns from logged campaign outcomes"
        )
    frame["customer_id"] = frame["customer_id"].astype("string")
    frame["action"] = frame["action"].astype(str)
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True)
    frame["outcome"] = frame["outcome"].astype("float64")
    frame["revenue"] = frame["revenue"].astype("float64").fillna(0.0)
    frame["as_of"] = week_start(frame["decided_at"])
    return frame.sort_values(["decided_at", "decision_id"]).reset_index(drop=True)


def score_enricher(churn: Any, value: Any) -> Enrich:
    """Churn / value scores and segments (fitted on the snapshot) for a feature frame."""
    from models.scorer import Scorer

    def enrich(features: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
        segments = fit_segments(features)
        scorer = Scorer(churn, value, None, default_catalog(), segments)
        return scorer.enrich(features, as_of)

    return enrich


def champion_enricher() -> tuple[Enrich, dict[str, str]]:
    """The enricher over ``churn@champion`` and ``value@champion`` (LookupError if absent)."""
    models: dict[str, Any] = {}
    versions: dict[str, str] = {}
    for kind in tracking.KINDS:
        try:
            models[kind], versions[kind] = tracking.load_model(kind, CHAMPION)
        except LookupError:
            raise LookupError(
                f"the NBA policy needs the churn and value champions' scores, but there is no "
                f"{kind}@{CHAMPION}: run `rapport train churn`, `rapport train value`, "
                "`rapport promote churn` and `rapport promote value` first (or `rapport demo`)"
            ) from None
    return score_enricher(models["churn"], models["value"]), versions


def customer_frame(
    con: Any,
    as_of: datetime,
    enrich: Enrich,
    customer_ids: Sequence[str] | None = None,
    spec: FeatureSpec | None = None,
) -> pd.DataFrame:
    """Features, scores and segments of the customers known at ``as_of`` (optionally some)."""
    features = build(con, as_of, spec)
    features["as_of"] = pd.Timestamp(as_utc(as_of))
    enriched = enrich(features, as_utc(as_of))
    if customer_ids is not None:
        enriched = enriched[enriched["customer_id"].isin(list(customer_ids))]
    return enriched.reset_index(drop=True)


@dataclass
class NbaData:
    """Logged decisions joined with features, scores and segments, split in time."""

    frame: pd.DataFrame
    feature_names: list[str]
    holdout_from: datetime
    spec_version: str
    as_of: datetime

    def part(self, name: str) -> pd.DataFrame:
        held = self.frame["as_of"] >= pd.Timestamp(self.holdout_from)
        rows = self.frame[held if name == "test" else ~held]
        return rows.reset_index(drop=True)

    def counts(self) -> dict[str, int]:
        train, test = self.part("train"), self.part("test")
        return {
            "decisions_train": len(train),
            "decisions_test": len(test),
            "cutoffs_train": int(train["as_of"].nunique()),
            "cutoffs_test": int(test["as_of"].nunique()),
        }

    def describe(self) -> dict[str, str]:
        train = self.part("train")
        return {
            "decisions_before": f"{self.as_of:%Y-%m-%d}",
            "train_weeks": f"{train['as_of'].min():%Y-%m-%d}..{train['as_of'].max():%Y-%m-%d}",
            "holdout_from": f"{self.holdout_from:%Y-%m-%d}",
        }


def _holdout_start(cutoffs: pd.Series, fraction: float) -> datetime:
    """The earliest cutoff of the latest weeks holding at least ``fraction`` of the rows."""
    counts = cutoffs.value_counts().sort_index(ascending=False)
    if len(counts) < 2:
        raise ValueError(
            "the logged decisions span a single week: a time split needs at least two "
            "(train on the earlier weeks, evaluate on the latest)"
        )
    share = counts.cumsum() / counts.sum()
    reached = int(np.searchsorted(share.to_numpy(), fraction))
    reached = min(reached, len(counts) - 2)  # keep at least one training week
    return as_utc(counts.index[reached])


def build_nba_data(
    con: Any,
    as_of: datetime | str | None = None,
    enrich: Enrich | None = None,
    holdout_fraction: float = 0.2,
    spec: FeatureSpec | None = None,
    progress: Progress | None = None,
) -> NbaData:
    """The NBA training set (see the module docstring); ``enrich`` defaults to the
    churn / value champions (:func:`champion_enricher`)."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    say = silent(progress)
    spec = spec or default_spec()
    if enrich is None:
        enrich = champion_enricher()[0]
    cutoff = as_utc(as_of) if as_of is not None else data_end(con)
    decisions = logged_decisions(con, cutoff)
    weeks = sorted(decisions["as_of"].unique())
    say(f"{len(decisions):,} decisions with outcomes in {len(weeks)} weeks: features per week")
    parts = []
    for week in weeks:
        rows = decisions[decisions["as_of"] == week]
        snapshot = customer_frame(con, as_utc(week), enrich, spec=spec)
        snapshot = snapshot.drop(columns="as_of")
        parts.append(rows.merge(snapshot, on="customer_id", how="inner"))
    frame = pd.concat(parts, ignore_index=True)
    lost = len(decisions) - len(frame)
    if lost:
        say(f"{lost:,} decisions dropped: customer unknown at the decision week")
    names = [*spec.names, *SCORE_FEATURES]
    holdout_from = _holdout_start(frame["as_of"], holdout_fraction)
    return NbaData(frame, names, holdout_from, spec.version, cutoff)


# --------------------------------------------------------------------------- fit
def fit_nba(
    frame: pd.DataFrame,
    feature_names: Sequence[str],
    catalog: Catalog,
    method: Method = "dr",
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    epsilon: float = 0.05,
) -> NbaModel:
    """Uplift models on logged rows (``action, propensity, outcome, revenue`` + features)."""
    missing = [c for c in [*LOG_COLUMNS, *feature_names] if c not in frame.columns]
    if missing:
        raise ValueError(f"the training table lacks columns {missing[:8]}")
    unknown = sorted(set(frame["action"].astype(str)) - set(catalog.ids))
    if unknown:
        raise ValueError(
            f"logged actions {unknown} are not in catalog {catalog.version}; add them to the "
            "catalog (the policy can only be evaluated on actions it knows)"
        )
    model = UpliftModel(method, dict(params or {}), random_state=seed)
    model.fit(
        frame[list(feature_names)],
        frame["action"].astype(str).to_numpy(),
        frame["propensity"].to_numpy(dtype="float64"),
        frame["outcome"].to_numpy(dtype="float64"),
        frame["revenue"].fillna(0.0).to_numpy(dtype="float64"),
    )
    return NbaModel(model, catalog, epsilon)


# --------------------------------------------------------------------------- OPE
def default_margin_rate(catalog: Catalog) -> float:
    """Mean margin rate of the catalog's actions other than the control."""
    rates = [a.margin_rate for a in catalog.actions if a.id != NO_ACTION]
    return float(np.mean(rates))


def rewards(frame: pd.DataFrame, catalog: Catalog, margin_rate: float) -> np.ndarray:
    """Per logged decision: ``revenue x margin_rate - cost`` of the logged action."""
    cost = {a.id: a.cost for a in catalog.actions}
    logged = frame["action"].astype(str)
    unknown = sorted(set(logged) - set(cost))
    if unknown:
        raise ValueError(f"logged actions {unknown} are not in catalog {catalog.version}")
    revenue = frame["revenue"].fillna(0.0).to_numpy(dtype="float64")
    return revenue * margin_rate - logged.map(cost).to_numpy(dtype="float64")


def reward_model(model: NbaModel, frame: pd.DataFrame, margin_rate: float) -> np.ndarray:
    """``q[n, K]``: predicted revenue x margin - cost per catalog action (control's revenue
    for an action the model never saw logged)."""
    outcomes = model.uplift.predict_outcome(frame[model.feature_names])
    control = outcomes[model.uplift.control][1]
    cols = [
        np.asarray(outcomes[a.id][1] if a.id in outcomes else control) * margin_rate - a.cost
        for a in model.catalog.actions
    ]
    return np.stack(cols, axis=1)


def greedy_matrix(result: Arbitration, actions: Sequence[str]) -> np.ndarray:
    """One-hot ``[n, K]`` of the greedy choice, columns in ``actions`` order."""
    chosen = encode_actions(result.best(), actions)
    pi = np.zeros((len(chosen), len(actions)))
    pi[np.arange(len(chosen)), chosen] = 1.0
    return pi


@dataclass
class PolicyValues:
    """Estimated mean reward per decision of several policies on one holdout."""

    results: dict[str, dict[str, OPEResult]]
    n: int
    margin_rate: float
    observed: float
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        rows = {}
        for policy, by_method in self.results.items():
            row: dict[str, float] = {}
            for method, r in by_method.items():
                row[method] = r.estimate
                row[f"{method}_lo"] = r.lo
                row[f"{method}_hi"] = r.hi
            row["ess"] = next(iter(by_method.values())).effective_sample_size
            rows[policy] = row
        return pd.DataFrame(rows).T

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for policy, by_method in self.results.items():
            for method, r in by_method.items():
                key = f"ope_{policy}_{method}"
                out |= {key: r.estimate, f"{key}_lo": r.lo, f"{key}_hi": r.hi}
        out["ope_logged_mean_reward"] = self.observed
        return out

    def summary(self) -> str:
        label = {k: f"{k} v{v}" for k, v in self.versions.items()}
        table = self.table().rename(index=label)
        shown = []
        for method in ("ips", "snips", "dr"):
            if method in table.columns:
                table[method.upper()] = [
                    f"{e:8.3f} [{lo:7.3f}, {hi:7.3f}]"
                    for e, lo, hi in zip(
                        table[method], table[f"{method}_lo"], table[f"{method}_hi"], strict=True
                    )
                ]
                shown.append(method.upper())
        table["ESS"] = table["ess"].map(lambda v: f"{v:,.0f}")
        lines = [
            f"policy value on the holdout ({self.n:,} logged decisions): mean reward per "
            f"decision = revenue x {self.margin_rate:g} - action cost, 95% bootstrap intervals",
            "\n".join("  " + line for line in table[[*shown, "ESS"]].to_string().splitlines()),
            f"  logged policy (observed): {self.observed:.3f}",
        ]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def evaluate_policies(
    candidate: NbaModel,
    frame: pd.DataFrame,
    champion: NbaModel | None = None,
    margin_rate: float | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> PolicyValues:
    """IPS / SNIPS / DR of the candidate, champion, random and single-action policies."""
    catalog = candidate.catalog
    margin = default_margin_rate(catalog) if margin_rate is None else margin_rate
    actions = catalog.ids
    logged = encode_actions(frame["action"].astype(str).to_numpy(), actions)
    p = frame["propensity"].to_numpy(dtype="float64")
    r = rewards(frame, catalog, margin)
    q = reward_model(candidate, frame, margin)
    result = candidate.arbitrate(frame)
    policies: dict[str, np.ndarray] = {"candidate": greedy_matrix(result, actions)}
    notes = []
    if champion is not None:
        try:
            policies["champion"] = greedy_matrix(champion.arbitrate(frame), actions)
        except (KeyError, ValueError) as exc:
            notes.append(f"champion not evaluated: {exc}")
    policies["random"] = random_policy(result.allowed)
    for j, action in enumerate(actions):
        policies[f"always {action}"] = single_action_policy(j, result.allowed)
    results = {
        name: evaluate_policy(pi, logged, p, r, q, n_boot=n_boot, seed=seed)
        for name, pi in policies.items()
    }
    return PolicyValues(results, len(frame), margin, float(r.mean()), notes=notes)


# --------------------------------------------------------------------------- uplift metrics
def uplift_metrics(model: NbaModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Per action on logged rows: Qini and AUUC of the conversion uplift and Qini of the
    revenue uplift (IPW with the logged propensities; action vs control rows only)."""
    pred = model.predict(frame)
    a = frame["action"].astype(str).to_numpy()
    p = frame["propensity"].to_numpy(dtype="float64")
    y = frame["outcome"].to_numpy(dtype="float64")
    rev = frame["revenue"].fillna(0.0).to_numpy(dtype="float64")
    rows = {}
    for j, action in enumerate(pred.actions):
        sel = (a == action) | (a == model.uplift.control)
        t = a[sel] == action
        if t.all() or not t.any():
            continue
        conv, revenue = pred.incremental_conversion[sel, j], pred.incremental_revenue[sel, j]
        rows[action] = {
            "qini": qini_auc(conv, t, y[sel], p[sel]),
            "auuc": auuc(conv, t, y[sel], p[sel]),
            "qini_revenue": qini_auc(revenue, t, rev[sel], p[sel]),
            "auuc_revenue": auuc(revenue, t, rev[sel], p[sel]),
            "rows": float(sel.sum()),
        }
    return pd.DataFrame(rows).T


# --------------------------------------------------------------------------- ground truth
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


def load_truth_actions(con: Any) -> pd.DataFrame | None:
    """The demo's ``truth_actions`` table, or None."""
    if "truth_actions" not in con.list_tables():
        return None
    frame = con.execute(con.table("truth_actions"))
    return frame if len(frame) else None


def truth_cutoff(con: Any) -> datetime | None:
    """The demo's truth cutoff (``truth_customers.as_of``), or None."""
    if "truth_customers" not in con.list_tables():
        return None
    t = con.table("truth_customers")
    value = con.execute(t.as_of.max().name("v").as_table()).iloc[0, 0]
    return None if pd.isna(value) else as_utc(value)


# --------------------------------------------------------------------------- plots
def uplift_curves_figure(model: NbaModel, frame: pd.DataFrame) -> Figure:
    """IPW uplift curves (incremental revenue per customer) per action on the holdout."""
    pred = model.predict(frame)
    a = frame["action"].astype(str).to_numpy()
    p = frame["propensity"].to_numpy(dtype="float64")
    rev = frame["revenue"].fillna(0.0).to_numpy(dtype="float64")
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    for j, action in enumerate(pred.actions):
        sel = (a == action) | (a == model.uplift.control)
        t = a[sel] == action
        if t.all() or not t.any():
            continue
        curve = uplift_curve(pred.incremental_revenue[sel, j], t, rev[sel], p[sel])
        ax.plot(curve.fraction, curve.gain, label=action)
        ax.plot([0, 1], [0, curve.gain[-1]], linestyle=":", color=ax.lines[-1].get_color())
    ax.set(
        title="Uplift curves (holdout, IPW)",
        xlabel="share targeted, by predicted revenue uplift",
        ylabel="incremental revenue per customer",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def action_mix(model: NbaModel, frame: pd.DataFrame, by: str = "rfm_segment") -> pd.DataFrame:
    """Share of each greedy action per segment."""
    chosen = pd.Series(model.arbitrate(frame).best(), index=frame.index, name="action")
    mix = pd.crosstab(frame[by].astype(str), chosen, normalize="index")
    return mix.reindex(columns=[a for a in model.catalog.ids if a in mix.columns])


def action_mix_figure(mix: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(7.5, 0.35 * len(mix) + 1.8))
    ax = fig.add_subplot()
    left = np.zeros(len(mix))
    for action in mix.columns:
        ax.barh(list(mix.index), mix[action].to_numpy(), left=left, label=action)
        left += mix[action].to_numpy()
    ax.set(title="Greedy action mix by RFM segment (holdout)", xlabel="share of decisions")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=3, fontsize=8)
    return fig


# --------------------------------------------------------------------------- MLflow
NBA_PYFUNC_CODE = '''"""Rapport NBA pyfunc wrapper, written by training.nba (models from code)."""

import pickle

import mlflow
import pandas as pd


class RapportNbaPyfunc(mlflow.pyfunc.PythonModel):
    """Uplift per action from a feature frame; ``.model`` is the native NbaModel."""

    def load_context(self, context):
        with open(context.artifacts["native"], "rb") as handle:
            self.model = pickle.load(handle)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.model.predict(model_input).to_frame().reset_index(drop=True)


mlflow.models.set_model(RapportNbaPyfunc())
'''


def _signature(model: NbaModel) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    cats = model.uplift.encoder_.categories
    inputs = [
        ColSpec("string" if name in cats else "double", name, required=False)
        for name in model.feature_names
    ]
    outputs = [
        ColSpec("double", f"uplift_{what}_{a}")
        for a in model.uplift.actions_
        for what in ("conversion", "revenue")
    ]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))  # type: ignore[arg-type]


def log_nba_model(model: NbaModel, example: pd.DataFrame) -> str:
    """Log ``model`` as a pyfunc in the active run, register it as ``nba``, return the version."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "rapport_nba_pyfunc.py"
        code.write_text(NBA_PYFUNC_CODE)
        native = Path(tmp) / "native.pkl"
        native.write_bytes(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        with tracking.quiet():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(code),
                artifacts={"native": str(native)},
                signature=_signature(model),
                input_example=example[model.feature_names].reset_index(drop=True),
                registered_model_name=NBA,
                pip_requirements=tracking._requirements(),
            )
    return str(info.registered_model_version)


def nba_aliases() -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        with tracking.quiet():
            registered = tracking.client().get_registered_model(NBA)
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in registered.aliases.items()}


def _set_alias(alias: str, version: str) -> None:
    with tracking.quiet():
        tracking.client().set_registered_model_alias(NBA, alias, str(version))


def _delete_alias(alias: str) -> None:
    with tracking.quiet():
        tracking.client().delete_registered_model_alias(NBA, alias)


def nba_version(alias: str | None = None, version: str | None = None) -> Any:
    """A registered ``nba`` version by number, alias or the latest; LookupError if absent."""
    from mlflow.exceptions import MlflowException

    mlflow_client = tracking.client()
    try:
        with tracking.quiet():
            if version is not None:
                return mlflow_client.get_model_version(NBA, str(version))
            if alias is not None:
                return mlflow_client.get_model_version_by_alias(NBA, alias)
            versions = mlflow_client.search_model_versions(f"name = '{NBA}'")
    except MlflowException:
        what = f"version {version}" if version else f"@{alias}" if alias else "any version"
        hint = "`rapport train nba`" + (" and `rapport promote nba`" if alias == CHAMPION else "")
        raise LookupError(f"no registered nba model {what}; run {hint}") from None
    if not versions:
        raise LookupError("no registered nba model yet; run `rapport train nba`")
    return max(versions, key=lambda v: int(v.version))


def load_nba(alias: str | None = CHAMPION, version: str | None = None) -> tuple[NbaModel, str]:
    """(native NbaModel, version) of ``nba@alias`` or an exact version."""
    import mlflow

    found = nba_version(alias=None if version else alias, version=version)
    tracking.configure()
    with tracking.quiet():
        pyfunc = mlflow.pyfunc.load_model(f"models:/{NBA}/{found.version}")
    return pyfunc.unwrap_python_model().model, str(found.version)


def _holdout_of(found: Any) -> pd.DataFrame:
    import mlflow

    with tracking.quiet(), tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=str(found.run_id), artifact_path=HOLDOUT_FILE, dst_path=tmp
        )
        return pd.read_parquet(path)


# --------------------------------------------------------------------------- train job
@dataclass
class NbaTrainResult:
    version: str | None
    run_id: str
    counts: dict[str, int]
    policy_values: PolicyValues
    uplift: pd.DataFrame
    methods: pd.DataFrame
    truth: TruthValues | None
    model: NbaModel
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"trained nba (run {self.run_id[:8]}, catalog {self.model.catalog.version}, "
            f"{c.get('decisions_train', 0):,} training decisions in "
            f"{c.get('cutoffs_train', 0)} weeks, holdout {c.get('decisions_test', 0):,})",
            "uplift learners on the holdout (Qini/AUUC averaged over actions"
            + (", MSE against the true uplift" if "mse_revenue" in self.methods else "")
            + "):",
            "\n".join(
                "  " + line
                for line in self.methods.to_string(float_format=lambda v: f"{v:.4f}").splitlines()
            ),
            self.policy_values.summary(),
        ]
        if self.truth is not None:
            lines.append(self.truth.summary())
        lines += [f"note: {note}" for note in self.notes]
        lines.append(
            f"registered as nba v{self.version} @{CHALLENGER}; `rapport promote nba` gates it "
            "against the champion"
            if self.version
            else "not registered"
        )
        return "\n".join(lines)


def _method_comparison(
    data_train: pd.DataFrame,
    test: pd.DataFrame,
    names: Sequence[str],
    catalog: Catalog,
    params: Mapping[str, Any] | None,
    seed: int,
    dr_model: NbaModel,
    truth_frame: pd.DataFrame | None,
    truth: pd.DataFrame | None,
) -> pd.DataFrame:
    models = {"dr": dr_model}
    for method in METHODS:
        if method != "dr":
            models[method] = fit_nba(data_train, names, catalog, method, params, seed)  # type: ignore[arg-type]
    rows = {}
    for name, model in models.items():
        per_action = uplift_metrics(model, test)
        rows[name] = {f"mean_{k}": float(per_action[k].mean()) for k in ("qini", "auuc")}
        rows[name]["mean_qini_revenue"] = float(per_action["qini_revenue"].mean())
    table = pd.DataFrame(rows).T
    if truth_frame is not None and truth is not None:
        table = table.join(truth_uplift_mse(models, truth_frame, truth))
        for name, model in models.items():
            values = truth_policy_values(model, truth_frame, truth)
            table.loc[name, "true_value_over_oracle"] = values.ratios()["learned_over_oracle"]
    return table


def train_nba(
    con: Any,
    as_of: datetime | str | None = None,
    catalog: Catalog | str | Path | None = None,
    progress: Progress | None = None,
    *,
    enrich: Enrich | None = None,
    params: Mapping[str, Any] | None = None,
    epsilon: float = 0.05,
    holdout_fraction: float = 0.2,
    compare_methods: bool = True,
    register: bool = True,
    n_boot: int = 200,
) -> NbaTrainResult:
    """Build the NBA training set, fit the DR learner, evaluate off-policy, log, register.

    ``catalog``: a :class:`Catalog` or a YAML path (default: the packaged catalog).
    ``as_of``: only decisions before it (default: all). The new version gets
    ``@challenger``; :func:`promote_nba` decides about ``@champion``.
    """
    import mlflow

    say = silent(progress)
    cat = _catalog(catalog)
    versions: dict[str, str] = {}
    if enrich is None:
        enrich, versions = champion_enricher()
    seed = get_settings().seed
    data = build_nba_data(con, as_of, enrich, holdout_fraction, progress=say)
    train, test = data.part("train"), data.part("test")
    cat.check_fields([*data.frame.columns])
    say(f"fitting the DR uplift learner on {len(train):,} decisions")
    model = fit_nba(train, data.feature_names, cat, "dr", params, seed, epsilon)
    experiment = tracking.configure()
    champion: NbaModel | None = None
    champion_version = nba_aliases().get(CHAMPION)
    if champion_version:
        champion = load_nba(version=champion_version)[0]
    say("off-policy evaluation on the holdout")
    values = evaluate_policies(model, test, champion, n_boot=n_boot, seed=seed)
    if champion_version:
        values.versions["champion"] = champion_version
    per_action = uplift_metrics(model, test)
    notes: list[str] = []
    truth = load_truth_actions(con)
    truth_at = truth_cutoff(con) if truth is not None else None
    truth_frame = truth_values = None
    if truth is not None and truth_at is not None:
        say(f"ground truth: features and scores at the truth cutoff {truth_at:%Y-%m-%d}")
        truth_frame = customer_frame(con, truth_at, enrich)
        truth_values = truth_policy_values(model, truth_frame, truth)
        if data.frame["decided_at"].max() >= pd.Timestamp(truth_at):
            notes.append(
                f"training decisions run past the truth cutoff {truth_at:%Y-%m-%d}; pass "
                f"--as-of {truth_at:%Y-%m-%d} for a strictly forward comparison"
            )
        if any(a.value_kind == "retained_value" for a in cat.actions):
            notes.append(
                "the catalog values retention actions by retained value; the truth counts "
                "14-day incremental revenue only, so the oracle ratio understates them"
            )
    methods = pd.DataFrame()
    if compare_methods:
        say("comparing DR with the T- and IPW-T-learners")
        methods = _method_comparison(
            train, test, data.feature_names, cat, params, seed, model, truth_frame, truth
        )
    info = lineage(con)
    mix = action_mix(model, test)
    with mlflow.start_run(experiment_id=experiment, run_name="train-nba") as run:
        mlflow.log_params(
            {
                "method": "dr",
                "n_folds": model.uplift.n_folds,
                "epsilon": epsilon,
                "margin_rate": values.margin_rate,
                "holdout_fraction": holdout_fraction,
                "catalog_version": cat.version,
                **{k: v for k, v in model.uplift.params.items() if k not in ("verbose",)},
                **data.describe(),
            }
        )
        mlflow.set_tags(
            {
                "rapport.kind": NBA,
                "rapport.feature_set": data.spec_version,
                "rapport.catalog_version": cat.version,
                "rapport.test_cutoff": f"{data.holdout_from:%Y-%m-%d}",
                "rapport.warehouse": str(info["warehouse"]),
                "rapport.method_choice": (
                    "DR learner: the logging propensities are non-uniform; DR corrects the "
                    "confounding T/IPW-T leave (see method_comparison.csv)"
                ),
                **{f"rapport.{k}_version": v for k, v in versions.items()},
                HOLDOUT_TAG: f"{data.holdout_from:%Y-%m-%d}|nba|{fingerprint(dict(info))}",
            }
        )
        metrics = {
            **values.metrics(),
            **{k: float(v) for k, v in data.counts().items()},
            **{
                f"{m}_{action}": float(v)
                for action, row in per_action.iterrows()
                for m, v in row.items()
                if m != "rows" and np.isfinite(v)
            },
            **{
                f"method_{name}_{k}": float(v)
                for name, row in methods.iterrows()
                for k, v in row.items()
                if np.isfinite(v)
            },
        }
        if truth_values is not None:
            metrics |= {f"truth_{k.replace(' ', '_')}": v for k, v in truth_values.values.items()}
            metrics |= {f"truth_{k}": v for k, v in truth_values.ratios().items()}
        mlflow.log_metrics(metrics)
        _log_artifacts(model, test, values, per_action, methods, mix, truth_values, notes, info)
        version = log_nba_model(model, test.head(5)) if register else None
    if version:
        _set_alias(CHALLENGER, version)
    return NbaTrainResult(
        version,
        run.info.run_id,
        data.counts(),
        values,
        per_action,
        methods,
        truth_values,
        model,
        notes,
    )


def _catalog(catalog: Catalog | str | Path | None) -> Catalog:
    if catalog is None:
        return default_catalog()
    if isinstance(catalog, Catalog):
        return catalog
    path = Path(catalog)
    if not path.is_file():
        raise ValueError(f"no catalog file at {path}")
    return parse_catalog(path.read_text(encoding="utf-8"), source=str(path))


def _log_artifacts(
    model: NbaModel,
    test: pd.DataFrame,
    values: PolicyValues,
    per_action: pd.DataFrame,
    methods: pd.DataFrame,
    mix: pd.DataFrame,
    truth: TruthValues | None,
    notes: list[str],
    info: Mapping[str, Any],
) -> None:
    import mlflow

    figures = [
        ("uplift_curves", plots.png(uplift_curves_figure(model, test))),
        ("action_mix_by_segment", plots.png(action_mix_figure(mix))),
    ]
    report = Report(
        "Rapport next-best-action policy",
        {
            "catalog": model.catalog.version,
            "holdout decisions": f"{len(test):,}",
            "reward": f"revenue x {values.margin_rate:g} - action cost",
        },
    )
    report.tables.append(("Policy value on the holdout (mean reward per decision)", values.table()))
    report.tables.append(("Uplift per action on the holdout", per_action))
    if len(methods):
        report.tables.append(("DR vs T vs IPW-T learners", methods))
    report.tables.append(("Greedy action mix by RFM segment", mix))
    if truth is not None:
        report.tables.append(
            ("True value per customer at the truth cutoff", pd.DataFrame({"value": truth.values}))
        )
    report.notes.extend([*values.notes, *notes])
    report.figures.extend(figures)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, image in figures:
            (folder / f"{name}.png").write_bytes(image)
        (folder / "report.html").write_text(report.to_html(), encoding="utf-8")
        (folder / "ope.html").write_text(
            Report(
                "NBA off-policy evaluation", tables=[("Policy value", values.table())]
            ).to_html(),
            encoding="utf-8",
        )
        values.table().to_csv(folder / "ope.csv")
        per_action.to_csv(folder / "uplift_metrics.csv")
        if len(methods):
            methods.to_csv(folder / "method_comparison.csv")
        mix.to_csv(folder / "action_mix.csv")
        (folder / "catalog.yaml").write_text(
            yaml.safe_dump(model.catalog.model_dump(mode="json"), sort_keys=False)
        )
        (folder / "lineage.json").write_text(json.dumps(dict(info), indent=2, default=str))
        test.to_parquet(folder / HOLDOUT_FILE, index=False)
        mlflow.log_artifacts(str(folder))


def train_nba_from_table(
    frame: pd.DataFrame,
    feature_columns: Sequence[str],
    catalog: Catalog | str | Path | None = None,
    *,
    time_column: str | None = None,
    holdout_fraction: float = 0.2,
    method: Method = "dr",
    params: Mapping[str, Any] | None = None,
    epsilon: float = 0.05,
    seed: int = 0,
    n_boot: int = 200,
) -> tuple[NbaModel, PolicyValues]:
    """Fit and evaluate an NBA policy on any table of (features, ``action``, ``propensity``,
    ``outcome``, ``revenue``): for a campaign run elsewhere. No MLflow, no warehouse.

    The holdout is the latest ``holdout_fraction`` of rows by ``time_column`` (default: the
    last rows in table order). The catalog's rules read the table's columns, so it must hold
    what they need (scores, consent flags, contact history) -- ``Catalog.check_fields`` says
    which are missing.
    """
    cat = _catalog(catalog)
    cat.check_fields(frame.columns)
    ordered = frame.sort_values(time_column, kind="stable") if time_column else frame
    ordered = ordered.reset_index(drop=True)
    cut = round(len(ordered) * (1.0 - holdout_fraction))
    if not 0 < cut < len(ordered):
        raise ValueError(f"{len(ordered)} rows cannot be split {1 - holdout_fraction:.0%} / rest")
    train, test = ordered.iloc[:cut], ordered.iloc[cut:].reset_index(drop=True)
    model = fit_nba(train, feature_columns, cat, method, params, seed, epsilon)
    return model, evaluate_policies(model, test, n_boot=n_boot, seed=seed)


# --------------------------------------------------------------------------- evaluate / promote
def evaluate_nba(version: str | None = None, n_boot: int = 200) -> PolicyValues:
    """The policy-value table of ``version`` (default the ``@challenger``, else the champion,
    else the latest) next to the champion, random and single actions on its holdout."""
    held = nba_aliases()
    wanted = version or held.get(CHALLENGER) or held.get(CHAMPION)
    found = nba_version(version=wanted)
    candidate = load_nba(version=str(found.version))[0]
    champion_version = held.get(CHAMPION)
    champion = None
    if champion_version and champion_version != str(found.version):
        champion = load_nba(version=champion_version)[0]
    values = evaluate_policies(
        candidate, _holdout_of(found), champion, n_boot=n_boot, seed=get_settings().seed
    )
    values.versions["candidate"] = str(found.version)
    if champion is not None and champion_version:
        values.versions["champion"] = champion_version
    return values


def promote_nba(version: str | int | None = None, margin: float | None = None) -> PromotionResult:
    """The gate: ``version`` (default ``@challenger``, else the latest) becomes ``@champion``
    only if its DR lower bound beats the champion's DR estimate (plus ``margin``) on the
    candidate's holdout; otherwise it stays ``@challenger`` and the reason says why."""
    from models.ope import promotion_gate

    margin = get_settings().promotion_margin if margin is None else margin
    held = nba_aliases()
    wanted = str(version) if version is not None else held.get(CHALLENGER)
    found = nba_version(version=wanted)
    cand_version = str(found.version)
    champion = held.get(CHAMPION)
    if champion is None:
        return _crown(cand_version, None, "no champion yet")
    if champion == cand_version:
        return PromotionResult("nba", champion, False, CHAMPION, "already the champion", champion)
    values = evaluate_policies(
        load_nba(version=cand_version)[0],
        _holdout_of(found),
        load_nba(version=champion)[0],
        seed=get_settings().seed,
    )
    if "champion" not in values.results:
        raise ValueError(f"the champion v{champion} cannot be evaluated: {values.notes}")
    passed, reason = promotion_gate(
        values.results["candidate"]["dr"], values.results["champion"]["dr"].estimate, margin
    )
    if passed:
        return _crown(cand_version, champion, reason)
    _set_alias(CHALLENGER, cand_version)
    return PromotionResult("nba", cand_version, False, CHALLENGER, reason, champion)


def _crown(version: str, before: str | None, reason: str) -> PromotionResult:
    _set_alias(CHAMPION, version)
    if nba_aliases().get(CHALLENGER) == version:
        _delete_alias(CHALLENGER)
    return PromotionResult("nba", version, True, CHAMPION, reason, before)


# --------------------------------------------------------------------------- explain
@dataclass
class NbaExplanation:
    customer_id: str
    as_of: datetime
    version: str
    catalog_version: str
    ranked: pd.DataFrame
    exclusions: dict[str, str]
    scores: dict[str, Any]

    def summary(self) -> str:
        s = self.scores
        lines = [
            f"customer {self.customer_id} as of {self.as_of:%Y-%m-%d %H:%M} UTC "
            f"(nba v{self.version}, catalog {self.catalog_version})",
            f"  churn probability {s[CHURN_FIELD]:.3f}, value p50 {s['value_p50']:.2f}, "
            f"segment {s['rfm_segment']}, ABC tier {s['abc_tier']}",
            "ranked actions (expected value = uplift x value; score = weight x expected "
            "value - cost):",
        ]
        table = self.ranked.to_string(index=False, float_format=lambda v: f"{v:.4f}")
        lines += ["  " + line for line in table.splitlines()]
        if self.exclusions:
            lines.append("excluded:")
            lines += [f"  {a}: {why}" for a, why in self.exclusions.items()]
        return "\n".join(lines)


def explain_nba(con: Any, customer_id: str, as_of: datetime | str | None = None) -> NbaExplanation:
    """The champion policy's ranking of every allowed action for one customer, with the
    components and why the others are excluded."""
    nba, version = load_nba(CHAMPION)
    enrich, _ = champion_enricher()
    when = as_utc(as_of) if as_of is not None else data_end(con)
    frame = customer_frame(con, when, enrich)
    rows = frame.index[frame["customer_id"].astype(str) == str(customer_id)]
    if not len(rows):
        raise LookupError(
            f"unknown customer {customer_id!r}: not in the warehouse, or signed up after "
            f"{when:%Y-%m-%d}"
        )
    one = frame.loc[rows[:1]].reset_index(drop=True)
    result = nba.arbitrate(one)
    explained = result.customer(0, k=len(result.actions), exclusions=True)
    ranked = pd.DataFrame(
        [
            {
                "rank": r.rank,
                "action": r.action,
                "channel": r.channel,
                "uplift": r.uplift,
                "value": r.value,
                "weight": r.weight,
                "expected_value": r.expected_value,
                "cost": r.cost,
                "score": r.score,
            }
            for r in explained.ranked
        ]
    )
    row = one.iloc[0]
    scores = {k: row[k] for k in (CHURN_FIELD, *OUTPUT_COLUMNS, "rfm_segment", "abc_tier")}
    return NbaExplanation(
        str(customer_id), when, version, nba.catalog.version, ranked, explained.exclusions, scores
    )
