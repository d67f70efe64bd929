"""Next best action jobs: train (fit the uplift learner on the campaign log, evaluate it
off-policy, log it to MLflow and register it as ``nba``), evaluate, promote (the gate) and
explain. The ``nba`` model lives in the registry like churn and value (:mod:`models.registry`).

The training set is built in :mod:`training.nba_data`; the policy-value tables and uplift
metrics are computed in :mod:`training.nba_evaluation`.

**Learner.** A cross-fitted doubly-robust (DR) learner with LightGBM
(:class:`models.uplift.UpliftModel`). Why DR: the log is not a randomised trial (the
logging policy's propensities depend on region, preferred channel and recency), so a
T-learner mixes each action's effect with who received it. On the synthetic benchmark of
``tests/models/test_uplift.py`` the DR learner's uplift MSE is 0.0016 against 0.0066 for
the T-learner and 0.0173 for the naive difference; every run re-checks this on its own
data (Qini / AUUC per action on the holdout for DR, T and IPW-T, plus whatever the
caller's ``compare`` measures, see :class:`NbaComparison`) and logs the comparison.

**Propensities.** A log without them (most CRM exports) gets estimated ones
(:mod:`models.propensity`); the OPE table then says so, with its overlap diagnostics.

**Gate.** The first ``nba`` model becomes ``@champion``; a later one only if its DR lower
bound beats the champion's DR estimate on the candidate's holdout (logged with the run),
otherwise it is ``@challenger`` with the reason. A holdout whose propensities were estimated
with poor overlap (:class:`models.propensity.Overlap`) is refused outright, first model or
not: its estimates rest on a handful of decisions.

**Champions.** ``rapport train nba`` adds the churn and value champions' scores as features
when both are registered; without them it trains from features alone as long as the
catalog reads no score (:func:`training.nba_data.enricher_for` names what is missing).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from features.timeutil import as_utc
from models import registry
from models.catalog import CHURN_FIELD, Catalog, default_catalog, parse_catalog
from models.nba import NbaModel
from models.propensity import fill_propensities, frame_overlap
from models.registry import CHALLENGER, CHAMPION
from models.uplift import METHODS, Method, UpliftModel
from models.value import OUTPUT_COLUMNS
from rapport.settings import Settings, get_settings
from training import plots, tracking
from training.datasets import Progress, data_end, fingerprint, lineage, silent
from training.jobs import PromotionResult, promote_through
from training.nba_data import (
    Enrich,
    NbaData,
    build_nba_data,
    champion_enricher,
    customer_frame,
    enricher_for,
)
from training.nba_evaluation import (
    PolicyValues,
    action_mix,
    action_mix_figure,
    evaluate_policies,
    uplift_curves_figure,
    uplift_metrics,
)
from training.report import Report
from training.tracking import HOLDOUT_TAG

NBA = "nba"
#: the columns a bring-your-own table needs besides the features
LOG_COLUMNS = ("action", "propensity", "outcome", "revenue")
HOLDOUT_FILE = "holdout.parquet"


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
    unlogged = int(frame["propensity"].isna().sum())
    if unlogged:
        raise ValueError(
            f"{unlogged:,} of {len(frame):,} logged decisions have no propensity: estimate them "
            "first over the whole log (models.propensity.fill_propensities; the NBA jobs do)"
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


# --------------------------------------------------------------------------- MLflow
def _holdout_of(found: Any) -> pd.DataFrame:
    """The holdout a registered version was evaluated on (logged with its run)."""
    with registry.quiet(), tempfile.TemporaryDirectory() as tmp:
        path = registry.client().download_artifacts(str(found.run_id), HOLDOUT_FILE, tmp)
        return pd.read_parquet(path)


# --------------------------------------------------------------------------- train job
@dataclass
class NbaComparison:
    """The policy and the uplift learners judged against a reference the warehouse does not
    hold, made by the caller's :data:`CompareNba` (the demo's: :mod:`rapport.truth`)."""

    #: prefix of its MLflow metrics (``<key>_<policy>``, ``<key>_<ratio>``)
    key: str
    #: policy -> value per customer (logged, and a table of the HTML report)
    values: dict[str, float]
    #: headline ratios (logged)
    ratios: dict[str, float]
    #: what the run prints after the policy-value table
    summary: str
    #: title of the values' table in the HTML report
    title: str
    #: learner -> extra columns of the DR / T / IPW-T comparison
    learners: pd.DataFrame
    #: what those columns measure, said in the comparison's heading
    learners_label: str
    notes: list[str] = field(default_factory=list)


#: ``(con, policy, learners by name, training set, enrich, progress)`` -> an
#: :class:`NbaComparison`, or None when the reference has nothing on this warehouse
CompareNba = Callable[
    [Any, NbaModel, Mapping[str, NbaModel], NbaData, Enrich, Progress], NbaComparison | None
]


@dataclass
class NbaTrainResult:
    version: str | None
    run_id: str
    counts: dict[str, int]
    policy_values: PolicyValues
    uplift: pd.DataFrame
    methods: pd.DataFrame
    comparison: NbaComparison | None
    model: NbaModel
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        c = self.counts
        other = self.comparison
        lines = [
            f"trained nba (run {self.run_id[:8]}, catalog {self.model.catalog.version}, "
            f"{c.get('decisions_train', 0):,} training decisions in "
            f"{c.get('cutoffs_train', 0)} weeks, holdout {c.get('decisions_test', 0):,})",
            "uplift learners on the holdout (Qini/AUUC averaged over actions"
            + (f", {other.learners_label}" if other is not None and len(self.methods) else "")
            + "):",
            "\n".join(
                "  " + line
                for line in self.methods.to_string(float_format=lambda v: f"{v:.4f}").splitlines()
            ),
            self.policy_values.summary(),
        ]
        if other is not None:
            lines.append(other.summary)
        lines += [f"note: {note}" for note in self.notes]
        lines.append(
            f"registered as nba v{self.version} @{CHALLENGER}; `rapport promote nba` gates it "
            "against the champion"
            if self.version
            else "not registered"
        )
        return "\n".join(lines)


def _other_learners(
    data_train: pd.DataFrame,
    names: Sequence[str],
    catalog: Catalog,
    params: Mapping[str, Any] | None,
    seed: int,
) -> dict[str, NbaModel]:
    """The T- and IPW-T-learners on the same rows, to compare the DR learner with."""
    return {
        method: fit_nba(data_train, names, catalog, method, params, seed)  # type: ignore[arg-type]
        for method in METHODS
        if method != "dr"
    }


def _method_comparison(learners: Mapping[str, NbaModel], test: pd.DataFrame) -> pd.DataFrame:
    rows = {}
    for name, model in learners.items():
        per_action = uplift_metrics(model, test)
        rows[name] = {f"mean_{k}": float(per_action[k].mean()) for k in ("qini", "auuc")}
        rows[name]["mean_qini_revenue"] = float(per_action["qini_revenue"].mean())
    return pd.DataFrame(rows).T


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
    compare: CompareNba | None = None,
) -> NbaTrainResult:
    """Build the NBA training set, fit the DR learner, evaluate off-policy, log, register.

    ``catalog``: a :class:`Catalog` or a YAML path (default: the packaged catalog).
    ``as_of``: only decisions before it (default: all). The new version gets
    ``@challenger``; :func:`promote_nba` decides about ``@champion``. ``compare``: a
    reference to judge the policy and the learners against too (see :data:`CompareNba`).
    """
    import mlflow

    say = silent(progress)
    cat = _catalog(catalog)
    versions: dict[str, str] = {}
    if enrich is None:
        enrich, versions = enricher_for(con, cat, say, as_utc(as_of) if as_of else None)
        if "churn" not in versions:
            say("no churn / value champions: training from features and segments alone")
    settings = get_settings()
    seed = settings.seed
    on_engine = _on_engine(settings)
    data = build_nba_data(
        con, as_of, enrich, holdout_fraction, progress=say, seed=seed, **on_engine
    )
    train, test = data.part("train"), data.part("test")
    cat.check_fields([*data.frame.columns])
    say(f"fitting the DR uplift learner on {len(train):,} decisions")
    model = fit_nba(train, data.feature_names, cat, "dr", params, seed, epsilon)
    experiment = tracking.configure()
    champion: NbaModel | None = None
    champion_version = registry.aliases(NBA).get(CHAMPION)
    if champion_version:
        champion = registry.load_model(NBA, version=champion_version)[0]
    say("off-policy evaluation on the holdout")
    values = evaluate_policies(model, test, champion, n_boot=n_boot, seed=seed)
    if champion_version:
        values.versions["champion"] = champion_version
    per_action = uplift_metrics(model, test)
    learners: dict[str, NbaModel] = {"dr": model}
    methods = pd.DataFrame()
    if compare_methods:
        say("comparing DR with the T- and IPW-T-learners")
        learners |= _other_learners(train, data.feature_names, cat, params, seed)
        methods = _method_comparison(learners, test)
    other = compare(con, model, learners, data, enrich, say) if compare is not None else None
    notes = list(other.notes) if other is not None else []
    if other is not None and len(methods):
        methods = methods.join(other.learners)
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
                "rapport.propensities": frame_overlap(data.frame).summary(),
                "rapport.engine": settings.engine,
                **({"rapport.train_max_rows": str(settings.train_max_rows)} if on_engine else {}),
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
        if other is not None:
            metrics |= {f"{other.key}_{k.replace(' ', '_')}": v for k, v in other.values.items()}
            metrics |= {f"{other.key}_{k}": v for k, v in other.ratios.items()}
        mlflow.log_metrics(metrics)
        _log_artifacts(model, test, values, per_action, methods, mix, other, notes, info)
        version = registry.register(NBA, model, test.head(5)) if register else None
    if version:
        registry.set_alias(NBA, CHALLENGER, version)
    return NbaTrainResult(
        version,
        run.info.run_id,
        data.counts(),
        values,
        per_action,
        methods,
        other,
        model,
        notes,
    )


def _on_engine(settings: Settings) -> dict[str, Any]:
    """What the settings' engine changes in the NBA training set: with Spark each decision
    week's features are built from the lake (:func:`training.spark_datasets.week_features`)
    and the decisions sampled uniformly to ``RAPPORT_TRAIN_MAX_ROWS``; with DuckDB
    nothing (the warehouse's build, every decision)."""
    if settings.engine != "spark":
        return {}
    from features.spark import session
    from training.spark_datasets import week_features

    features = week_features(session(settings), settings.lake)
    return {"features": features, "max_rows": settings.train_max_rows}


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
    other: NbaComparison | None,
    notes: list[str],
    info: Mapping[str, Any],
) -> None:
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
    if other is not None:
        report.tables.append((other.title, pd.DataFrame({"value": other.values})))
    report.notes.extend([*values.notes, *notes])
    report.figures.extend(figures)
    with tracking.artifacts(report, figures, info) as folder:
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
        test.to_parquet(folder / HOLDOUT_FILE, index=False)


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
    Missing propensities (no column, or nulls) are estimated over the whole table first.

    The holdout is the latest ``holdout_fraction`` of rows by ``time_column`` (default: the
    last rows in table order). The catalog's rules read the table's columns, so it must hold
    what they need (scores, consent flags, contact history) -- ``Catalog.check_fields`` says
    which are missing.
    """
    cat = _catalog(catalog)
    cat.check_fields(frame.columns)
    frame = fill_propensities(frame, feature_columns, seed)
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
    held = registry.aliases(NBA)
    wanted = version or held.get(CHALLENGER) or held.get(CHAMPION)
    found = registry.get_version(NBA, version=wanted)
    candidate = registry.load_model(NBA, version=str(found.version))[0]
    champion_version = held.get(CHAMPION)
    champion = None
    if champion_version and champion_version != str(found.version):
        champion = registry.load_model(NBA, version=champion_version)[0]
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
    held = registry.aliases(NBA)
    wanted = str(version) if version is not None else held.get(CHALLENGER)
    candidate = registry.get_version(NBA, version=wanted)
    overlap = frame_overlap(_holdout_of(candidate))
    if overlap.estimated and overlap.poor:
        cand_version = str(candidate.version)
        registry.set_alias(NBA, CHALLENGER, cand_version)
        reason = (
            "refused: the off-policy estimates rest on estimated propensities with poor "
            "overlap (" + "; ".join(overlap.problems()) + "); log propensities or explore "
            "(randomise part of the campaign) before trusting a new policy"
        )
        return PromotionResult(NBA, cand_version, False, CHALLENGER, reason, held.get(CHAMPION))

    def judge(found: Any, champion: str) -> tuple[bool, str]:
        values = evaluate_policies(
            registry.load_model(NBA, version=found.version)[0],
            _holdout_of(found),
            registry.load_model(NBA, version=champion)[0],
            seed=get_settings().seed,
        )
        if "champion" not in values.results:
            raise ValueError(f"the champion v{champion} cannot be evaluated: {values.notes}")
        return promotion_gate(
            values.results["candidate"]["dr"], values.results["champion"]["dr"].estimate, margin
        )

    return promote_through(NBA, version, judge)


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
    nba, version = registry.load_model(NBA, CHAMPION)
    enrich, _ = champion_enricher(con)
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
