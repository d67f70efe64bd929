"""The offline jobs the CLI, the demo and the notebooks call: train, evaluate, tune, promote.

Each job takes a warehouse connection (any Ibis backend holding the contract tables) and
returns a small result object whose ``summary()`` is what the command prints. Everything a
run produces -- parameters, metrics, cutoffs, data lineage, plots, the HTML report and the
model -- goes to MLflow (:mod:`training.tracking`; models, aliases and promotions through
:mod:`models.registry`).

Every evaluation happens on the **holdout cutoff** (the latest one, see
:mod:`training.datasets`) and always shows the model next to its baselines on the same
rows: for churn the recency-only score (days since the last order) and BG/NBD's P(alive);
for value BG/NBD + Gamma-Gamma fitted on the history before the same cutoff and the
naive "last 90 days' spend again". A caller that knows more than the warehouse can pass
``compare`` (:data:`Compare`): its :class:`Comparison` is printed, logged and reported with
the run (the demo, its notebook and the quality tests pass
:func:`rapport.truth.compare_holdout`, what the demo's simulator knows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.timeutil import as_utc
from models import registry
from models.btyd import BTYDValueBaseline, rfm_from_orders
from models.churn import ChurnModel
from models.metrics import (
    classification_metrics,
    interval_coverage,
    ranking_metrics,
    regression_metrics,
)
from models.registry import CHALLENGER, CHAMPION
from models.value import ValueModel
from rapport.settings import get_settings
from training import plots, tracking
from training.datasets import (
    Progress,
    TrainingSet,
    Window,
    build_training_set,
    fingerprint,
    labelled_features,
    lineage,
    orders_before,
    signups_before,
    silent,
)
from training.report import Report
from training.tracking import GATE_METRIC, HOLDOUT_TAG, Kind
from training.tune import PruningCallback, TuneOutcome, optimise

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

Model = ChurnModel | ValueModel
#: the metric columns a summary shows per kind
SHOWN: dict[str, tuple[str, ...]] = {
    "churn": ("auc", "pr_auc", "top_decile_lift", "brier"),
    "value": ("spearman", "mae", "rmse", "top_decile_capture", "total_error"),
}


def _check_kind(kind: str) -> Kind:
    if kind not in tracking.KINDS:
        raise ValueError(f"model kind must be one of {tracking.KINDS}, got {kind!r}")
    return kind  # type: ignore[return-value]


# --- fitting ----------------------------------------------------------------------------
def _target(kind: Kind, frame: pd.DataFrame) -> pd.Series:
    return frame["churned"].astype("float64") if kind == "churn" else frame["spend"]


def _population(kind: Kind, frame: pd.DataFrame) -> pd.DataFrame:
    """Churn is defined for active customers only; value for everyone known."""
    rows = frame[frame["active"]] if kind == "churn" else frame
    return rows.reset_index(drop=True)


def fit_model(
    kind: Kind,
    data: TrainingSet,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    callbacks: Sequence[Any] = (),
) -> Model:
    """Fit on the training cutoffs, early-stop / calibrate on the validation cutoff (a
    sampled set's rows weighted by their sampling weights)."""
    churn = kind == "churn"
    model: Model = (
        ChurnModel(params, seed) if churn else ValueModel(params, seed, data.horizon_days)
    )
    return model.fit(
        data.features("train", active_only=churn),
        _target(kind, data.part("train", active_only=churn)),
        data.features("valid", active_only=churn),
        _target(kind, data.part("valid", active_only=churn)),
        callbacks,
        sample_weight=data.weights("train", active_only=churn),
        valid_weight=data.weights("valid", active_only=churn),
    )


def _weight(rows: pd.DataFrame) -> np.ndarray | None:
    """The rows' sampling weights (a training set sampled on Spark), else None."""
    return rows["weight"].to_numpy(dtype="float64") if "weight" in rows.columns else None


def predict(model: Model, frame: pd.DataFrame) -> np.ndarray:
    """P(churn) or expected spend per row of a feature frame (extra columns are ignored)."""
    if isinstance(model, ChurnModel):
        return model.predict_proba(frame)
    return model.predict(frame)["value_mean"].to_numpy()


# --- holdout evaluation -------------------------------------------------------------------
@dataclass
class Comparison:
    """Holdout scores measured against a reference the warehouse does not hold, made by
    the caller's :data:`Compare` (the demo's: :mod:`rapport.truth`)."""

    #: what the scores are compared with, as printed ("against the <name>:")
    name: str
    #: prefix of its MLflow metrics (``<key>_<scorer>_<metric>``) and artifact
    key: str
    #: scorer -> metrics against the reference
    metrics: dict[str, dict[str, float]]
    #: headline ratios, printed and logged (``<key>_<ratio>``)
    ratios: dict[str, float]
    #: title of its table in the HTML report
    title: str
    notes: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.metrics).T


#: ``(con, kind, as_of, holdout rows, realised labels, scores by name)`` -> a
#: :class:`Comparison`, or None when the reference does not cover this holdout
Compare = Callable[
    [Any, Kind, datetime, pd.DataFrame, np.ndarray, Mapping[str, np.ndarray]], Comparison | None
]


@dataclass
class HoldoutEvaluation:
    """Models and baselines scored on the same holdout rows."""

    kind: Kind
    as_of: datetime
    horizon_days: int
    rows: int
    #: name -> metrics against the realised labels (models first, then baselines)
    metrics: dict[str, dict[str, float]]
    #: the same scores against the caller's reference (None without ``compare``)
    comparison: Comparison | None = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.metrics).T

    def summary(self) -> str:
        shown = [c for c in SHOWN[self.kind] if c in self.table().columns]
        lines = [
            f"{self.kind} on the holdout {self.as_of:%Y-%m-%d} (+{self.horizon_days}d, "
            f"{self.rows:,} {'active ' if self.kind == 'churn' else ''}customers):",
            _indent(self.table()[shown].to_string(float_format=lambda v: f"{v:.4f}", na_rep="-")),
        ]
        if self.comparison is not None:
            other = self.comparison.table()
            lines.append(f"against the {self.comparison.name}:")
            shown = [c for c in shown if c in other.columns]
            text = other[shown].to_string(float_format=lambda v: f"{v:.4f}", na_rep="-")
            lines.append(_indent(text))
            lines += [f"  {k}: {v:.3f}" for k, v in self.comparison.ratios.items()]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


@dataclass
class _Scored:
    """Predictions behind an evaluation, kept for the plots."""

    y: np.ndarray
    scores: dict[str, np.ndarray]

    @classmethod
    def of(cls, y: np.ndarray, scores: dict[str, np.ndarray], weight: np.ndarray | None) -> _Scored:
        """The rows as the plots draw them: a weighted (sampled) holdout resampled by its
        weights (fixed seed, as many rows), so the curves stand for the base as the
        weighted metrics beside them do."""
        if weight is None:
            return cls(y, scores)
        rows = np.random.default_rng(0).choice(len(y), len(y), p=weight / weight.sum())
        return cls(y[rows], {name: s[rows] for name, s in scores.items()})


def _btyd(con: Any, as_of: datetime, horizon_days: int) -> pd.DataFrame:
    """BG/NBD + Gamma-Gamma fitted on every customer known at ``as_of`` (their history
    before it); P(alive) and expected spend over the horizon by customer id."""
    signups = signups_before(con, as_of)
    rfm = rfm_from_orders(
        orders_before(con, as_of), as_of, customer_ids=signups.index.to_numpy(), signup=signups
    )
    args = (rfm["frequency"], rfm["recency"], rfm["T"])
    model = BTYDValueBaseline().fit(*args, rfm["monetary_value"])
    return pd.DataFrame(
        {
            "p_alive": model.predict_p_alive(*args),
            "expected_spend": model.predict_expected_spend(
                horizon_days, *args, rfm["monetary_value"]
            ),
        },
        index=rfm.index,
    )


def evaluate_holdout(
    kind: Kind,
    models: Mapping[str, Model],
    holdout: pd.DataFrame,
    con: Any,
    horizon_days: int,
    baselines: bool = True,
    compare: Compare | None = None,
) -> tuple[HoldoutEvaluation, _Scored]:
    """Score ``models`` (name -> fitted model) and the baselines on one holdout cutoff,
    and (with ``compare``) against the caller's reference."""
    rows = _population(kind, holdout)
    as_of = as_utc(rows["as_of"].iloc[0])
    y = _target(kind, rows).to_numpy()
    w = _weight(rows)
    scores = {name: predict(model, rows) for name, model in models.items()}
    notes: list[str] = []
    if w is not None:
        notes.append(
            f"a stratified sample: {len(rows):,} rows weighted to the {w.sum():,.0f} "
            "customers they stand for (metrics weighted)"
        )
    if baselines:
        scores.update(_baseline_scores(kind, rows, con, as_of, horizon_days, notes))
    if kind == "churn":
        metrics = {
            name: (classification_metrics if name in models else ranking_metrics)(y, s, weight=w)
            for name, s in scores.items()
        }
    else:
        metrics = {name: regression_metrics(y, s, weight=w) for name, s in scores.items()}
    evaluation = HoldoutEvaluation(kind, as_of, horizon_days, len(rows), metrics, notes=notes)
    if compare is not None:
        evaluation.comparison = compare(con, kind, as_of, rows, y, scores)
        if evaluation.comparison is not None:
            notes.extend(evaluation.comparison.notes)
    return evaluation, _Scored.of(y, scores, w)


def _baseline_scores(
    kind: Kind, rows: pd.DataFrame, con: Any, as_of: datetime, horizon: int, notes: list[str]
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if kind == "churn":
        # active customers always have a last order, so this score has no gaps
        out["recency"] = rows["days_since_last_order"].to_numpy(dtype="float64")
    else:
        out["last_90d_again"] = rows["spend_90d"].to_numpy(dtype="float64") * horizon / 90.0
    try:
        btyd = _btyd(con, as_of, horizon).loc[rows["customer_id"]]
    except (RuntimeError, ValueError) as exc:
        notes.append(f"BG/NBD baseline skipped: {exc}")
        return out
    if kind == "churn":
        out["btyd_p_alive"] = 1.0 - btyd["p_alive"].to_numpy()
    else:
        out["btyd"] = btyd["expected_spend"].to_numpy()
    return out


# --- train -------------------------------------------------------------------------------
@dataclass
class TrainResult:
    kind: Kind
    version: str | None
    run_id: str
    evaluation: HoldoutEvaluation
    valid_metrics: dict[str, float]
    counts: dict[str, int]
    model: Model

    def summary(self) -> str:
        registered = (
            f"registered as {self.kind} v{self.version} @{CHALLENGER}; "
            f"`rapport promote {self.kind}` gates it against the champion"
            if self.version
            else "not registered"
        )
        return "\n".join(
            [
                f"trained {self.kind} (run {self.run_id[:8]}, "
                f"{self.counts.get('rows_train', 0):,} training rows)",
                self.evaluation.summary(),
                registered,
            ]
        )


def _valid_metrics(kind: Kind, model: Model, data: TrainingSet) -> dict[str, float]:
    rows = _population(kind, data.part("valid"))
    y, s, w = _target(kind, rows).to_numpy(), predict(model, rows), _weight(rows)
    if kind == "churn":
        return classification_metrics(y, s, weight=w)
    return regression_metrics(y, s, weight=w)


def _training_data(
    con: Any, data: TrainingSet | None, window: Window, say: Progress, kind: Kind
) -> TrainingSet:
    """``data`` when given (its own horizon), else the time-split set of ``window``."""
    if data is not None:
        if not data.serves(kind):
            raise ValueError(f"this training set was sampled for another kind than {kind}")
        return data
    return training_set(kind, con, window, say)


def training_set(
    kind: Kind, con: Any, window: Window, progress: Progress | None = None
) -> TrainingSet:
    """The time-split training set of the settings' engine: built by DuckDB from the
    warehouse ``con``, or (``RAPPORT_ENGINE=spark``) on Spark from the lake and sampled
    for ``kind`` to ``RAPPORT_TRAIN_MAX_ROWS`` (:mod:`training.spark_datasets`)."""
    settings = get_settings()
    if settings.engine != "spark":
        return build_training_set(con, window, progress=progress)
    from features.spark import session
    from training.spark_datasets import build_on_spark

    spark = session(settings)
    return build_on_spark(kind, spark, settings.lake, window, seed=settings.seed, progress=progress)


def train(
    kind: str,
    con: Any,
    as_of: datetime | str | None = None,
    horizon_days: int | None = None,
    params: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    *,
    data: TrainingSet | None = None,
    train_cutoffs: int = Window.train_cutoffs,
    step_months: int = Window.step_months,
    register: bool = True,
    run_name: str | None = None,
    compare: Compare | None = None,
) -> TrainResult:
    """Build the time-split dataset, fit, evaluate on the holdout, log and register.

    ``data``: a dataset already built (the demo trains churn and value on one). The new
    version gets the ``@challenger`` alias; :func:`promote` decides about ``@champion``.
    ``compare``: a reference to judge the holdout scores against too (see :data:`Compare`).
    """
    import mlflow

    kind, settings, say = _check_kind(kind), get_settings(), silent(progress)
    window = Window(as_of, horizon_days or settings.horizon_days, train_cutoffs, step_months)
    data = _training_data(con, data, window, say, kind)
    horizon = data.horizon_days
    say(f"fitting {kind} on {len(data.plan.train)} training cutoffs")
    model = fit_model(kind, data, params, settings.seed)
    say("evaluating on the holdout next to the baselines")
    evaluation, scored = evaluate_holdout(
        kind, {"model": model}, data.part("test"), con, horizon, compare=compare
    )
    valid = _valid_metrics(kind, model, data)
    info = lineage(con)
    experiment = tracking.configure()
    say("logging to MLflow")
    with mlflow.start_run(
        experiment_id=experiment, run_name=run_name or f"train-{kind}", nested=_nested()
    ) as run:
        _log_run(kind, model, data, evaluation, valid, info)
        _log_artifacts(kind, model, data, evaluation, scored, info, run.info.run_id)
        version = None
        if register:
            version = registry.register(kind, model, data.part("test").head(5))
    if version:
        registry.set_alias(kind, CHALLENGER, version)
    return TrainResult(kind, version, run.info.run_id, evaluation, valid, data.counts(), model)


def _nested() -> bool:
    import mlflow

    return mlflow.active_run() is not None


def _params(model: Model) -> dict[str, Any]:
    """The model's LightGBM settings, minus the ones that do not change the result."""
    skip = ("verbose", "num_threads")
    return {k: v for k, v in model.params.items() if k not in skip}


def _boosters(model: Model) -> dict[str, Any]:
    return {"churn": model.booster_} if isinstance(model, ChurnModel) else model.boosters


def _holdout_key(data: TrainingSet, info: Mapping[str, Any]) -> str:
    """Equal keys: the same holdout rows (a sampled holdout: the same sample too)."""
    key = f"{data.plan.test:%Y-%m-%d}|h{data.horizon_days}|{fingerprint(dict(info))}"
    if (s := data.sampling) is not None:
        key += f"|sample-{s.kind}-{s.max_rows}-{s.seed}"
    return key


def _flat(prefix: str, metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {
        f"{prefix}{name}_{key}": value
        for name, values in metrics.items()
        for key, value in values.items()
        if np.isfinite(value)
    }


def _log_run(
    kind: Kind,
    model: Model,
    data: TrainingSet,
    evaluation: HoldoutEvaluation,
    valid: Mapping[str, float],
    info: Mapping[str, Any],
) -> None:
    import mlflow

    mlflow.log_params({**_params(model), "horizon_days": data.horizon_days, **data.plan.describe()})
    mlflow.set_tags(
        {
            "rapport.kind": kind,
            "rapport.feature_set": data.spec_version,
            "rapport.test_cutoff": f"{data.plan.test:%Y-%m-%d}",
            "rapport.warehouse": str(info["warehouse"]),
            HOLDOUT_TAG: _holdout_key(data, info),
            **data.tags(),
        }
    )
    model_metrics = evaluation.metrics["model"]
    others = {k: v for k, v in evaluation.metrics.items() if k != "model"}
    metrics = {
        **{f"test_{k}": v for k, v in model_metrics.items() if np.isfinite(v)},
        **{f"valid_{k}": v for k, v in valid.items() if np.isfinite(v)},
        **_flat("baseline_", others),
        **{k: float(v) for k, v in data.counts().items()},
        **{f"trees_{name}": float(b.current_iteration()) for name, b in _boosters(model).items()},
    }
    if (other := evaluation.comparison) is not None:
        metrics |= _flat(f"{other.key}_", other.metrics)
        metrics |= {f"{other.key}_{k}": v for k, v in other.ratios.items()}
    if isinstance(model, ValueModel):
        test = data.part("test")
        band = model.predict(test)
        metrics["test_interval_coverage_p10_p90"] = interval_coverage(
            test["spend"], band["value_p10"], band["value_p90"]
        )
        # boosted, prior or blend: what won on the validation cutoff, and why
        mlflow.log_params(model.choice_.as_params())
        mlflow.set_tag("rapport.value_choice", model.choice_.reason())
        metrics |= {f"valid_rmse_{k}": v for k, v in model.choice_.rmse.items()}
    mlflow.log_metrics(metrics)


def _log_artifacts(
    kind: Kind,
    model: Model,
    data: TrainingSet,
    evaluation: HoldoutEvaluation,
    scored: _Scored,
    info: Mapping[str, Any],
    run_id: str,
) -> None:
    figures = _figures(kind, model, scored)
    report = _report(kind, model, data, evaluation, figures, run_id)
    with tracking.artifacts(report, figures, info) as folder:
        evaluation.table().to_csv(folder / "holdout_metrics.csv")
        if (other := evaluation.comparison) is not None:
            other.table().to_csv(folder / f"{other.key}_metrics.csv")
        model.feature_importance().to_csv(folder / "feature_importance.csv", header=["gain"])
    registry.log_reference(reference_frame(kind, model, data), holdout_groups(kind, model, data))


#: rows of the holdout snapshot kept as the monitoring reference (drift is measured
#: against them; 20,000 rows put a PSI bin's share within about +-0.005)
REFERENCE_ROWS = 20_000
#: the score column of each kind, named as in the ``scores`` table
SCORE_COLUMN: dict[Kind, str] = {"churn": "churn_probability", "value": "value_mean"}


def reference_frame(kind: Kind, model: Model, data: TrainingSet) -> pd.DataFrame:
    """Features and score of (a sample of) every customer at every cutoff of the training
    set (training, validation and holdout snapshots): the seasons and campaign phases the
    model was built on, which the monitor compares each scoring run with."""
    rows = data.frame
    weights = rows["weight"] if "weight" in rows.columns else None  # a sample: as the base
    if len(rows) > REFERENCE_ROWS or weights is not None:
        size, again = min(len(rows), REFERENCE_ROWS), weights is not None
        rows = rows.sample(size, replace=again, random_state=0, weights=weights)
    frame = rows[["customer_id", "as_of", *data.feature_names]].reset_index(drop=True)
    frame[SCORE_COLUMN[kind]] = predict(model, rows)
    return frame


def holdout_groups(kind: Kind, model: Model, data: TrainingSet) -> pd.DataFrame:
    """The model's own holdout figures for the whole base and per ABC tier and RFM
    segment (segments fitted on the holdout snapshot, as a scoring run fits them on its
    batch): what ``rapport monitor`` judges each group's realised figures against, so a
    bias the champion had at training, measured, is no alarm later."""
    from features.segments import assign_segments, fit_segments
    from training.monitor import group_figures
    from training.monitor_checks import GROUPS

    test = data.part("test")
    if "weight" in test.columns:  # a sample: resampled by weight, to stand for the base
        test = test.sample(len(test), replace=True, weights="weight", random_state=0)
        test = test.reset_index(drop=True)
    try:
        segments = assign_segments(test, fit_segments(test))
        test = test.assign(**{g: segments[g] for g in GROUPS})
    except KeyError:  # a feature set without the RFM / ABC inputs: the base only
        test = test.assign(**{g: None for g in GROUPS})
    rows = _population(kind, test)
    y = _target(kind, rows).to_numpy(dtype="float64")
    if isinstance(model, ChurnModel):
        return group_figures(kind, rows.assign(churned=y, churn_probability=predict(model, rows)))
    band = model.predict(rows)
    return group_figures(
        kind, rows.assign(spend=y, **{c: band[c].to_numpy() for c in band.columns})
    )


def _figures(kind: Kind, model: Model, scored: _Scored) -> list[tuple[str, bytes]]:
    y, scores = scored.y, scored.scores
    if kind == "churn":
        shown = [
            ("roc", plots.roc(y, scores)),
            ("precision_recall", plots.precision_recall(y, scores)),
            ("calibration", plots.calibration(y, scores["model"])),
            ("gains_lift", plots.gains(y, scores, "churners")),
        ]
    else:
        shown = [
            ("value_deciles", plots.deciles(y, scores)),
            ("gains_lift", plots.gains(y, scores, "realised value")),
        ]
    shown.append(("feature_importance", plots.importance(model.feature_importance())))
    return [(name, plots.png(fig)) for name, fig in shown]


def _report(
    kind: Kind,
    model: Model,
    data: TrainingSet,
    evaluation: HoldoutEvaluation,
    figures: list[tuple[str, bytes]],
    run_id: str,
) -> Report:
    facts = {
        "run": run_id,
        "feature set": data.spec_version,
        "horizon": f"{data.horizon_days} days",
        **{k.replace("_", " "): v for k, v in data.plan.describe().items()},
        **{k.replace("_", " "): f"{v:,}" for k, v in data.counts().items()},
    }
    report = Report(f"Rapport {kind} model", facts)
    report.tables.append(("Holdout: model and baselines (realised labels)", evaluation.table()))
    if (other := evaluation.comparison) is not None:
        report.tables.append((other.title, other.table()))
        ratios = pd.DataFrame({"ratio": other.ratios})
        report.tables.append((f"Ratios against the {other.name}", ratios))
    if isinstance(model, ChurnModel):
        report.tables.append(("Example reasons (first holdout customers)", _reasons(model, data)))
    report.figures.extend(figures)
    report.notes.extend(evaluation.notes)
    return report


def _reasons(model: ChurnModel, data: TrainingSet, rows: int = 5) -> pd.DataFrame:
    test = _population("churn", data.part("test")).head(rows)
    explained = model.explain(test)
    return pd.DataFrame(
        {
            "p_churn": model.predict_proba(test),
            "raises risk": ["; ".join(r["phrase"] for r in e["up"]) for e in explained],
            "lowers risk": ["; ".join(r["phrase"] for r in e["down"]) for e in explained],
        },
        index=test["customer_id"].to_numpy(),
    )


# --- evaluate ----------------------------------------------------------------------------
@dataclass
class EvaluationResult:
    evaluations: list[HoldoutEvaluation]
    versions: dict[str, dict[str, str]]

    def summary(self) -> str:
        parts = []
        for evaluation in self.evaluations:
            names = ", ".join(f"{a} = v{v}" for a, v in self.versions[evaluation.kind].items())
            parts.append(f"{evaluation.kind} ({names or 'no registered model'})")
            parts.append(evaluation.summary())
        return "\n".join(parts)


def holdout(con: Any, as_of: datetime | str | None, horizon_days: int) -> pd.DataFrame:
    """Features and labels at the holdout cutoff (default: the latest possible one)."""
    from training.datasets import default_as_of

    cutoff = as_utc(as_of) if as_of is not None else default_as_of(con, horizon_days)
    return labelled_features(con, [cutoff], horizon_days)


def evaluate(
    con: Any,
    kinds: Sequence[str] = tracking.KINDS,
    as_of: datetime | str | None = None,
    horizon_days: int | None = None,
    progress: Progress | None = None,
    compare: Compare | None = None,
) -> EvaluationResult:
    """Champion and challenger of each kind next to the baselines on the latest holdout
    (and, with ``compare``, against the caller's reference)."""
    say = silent(progress)
    horizon = horizon_days or get_settings().horizon_days
    say("building the holdout")
    frame = holdout(con, as_of, horizon)
    evaluations: list[HoldoutEvaluation] = []
    versions: dict[str, dict[str, str]] = {}
    for kind in map(_check_kind, kinds):
        held = registry.aliases(kind)
        versions[kind] = {a: v for a, v in held.items() if a in (CHAMPION, CHALLENGER)}
        models = {
            f"{alias} v{version}": registry.load_model(kind, version=version)[0]
            for alias, version in sorted(versions[kind].items())
        }
        say(f"scoring {kind}: {', '.join(models) or 'baselines only'}")
        evaluations.append(evaluate_holdout(kind, models, frame, con, horizon, compare=compare)[0])
    return EvaluationResult(evaluations, versions)


# --- promote -----------------------------------------------------------------------------
@dataclass
class PromotionResult:
    kind: str  # churn, value or nba
    version: str
    promoted: bool
    alias: str
    reason: str
    champion_before: str | None
    #: after a promotion: the BentoML tag of the champions bundle the service loads, or
    #: None with the reason in ``bundle_note`` (e.g. no value champion yet)
    bundle: str | None = None
    bundle_note: str = ""

    def summary(self) -> str:
        verdict = "promoted to" if self.promoted else "stays"
        return f"{self.kind} v{self.version} {verdict} @{self.alias}: {self.reason}"


def promote(
    kind: str,
    version: str | int | None = None,
    con: Any = None,
    margin: float | None = None,
    progress: Progress | None = None,
) -> PromotionResult:
    """The gate: ``version`` (default the ``@challenger``, else the latest) becomes
    ``@champion`` only if it beats the champion by more than ``margin`` (default
    ``settings.promotion_margin``) on the same holdout; otherwise it is ``@challenger``.

    Runs evaluated on the same holdout (cutoff, horizon and data fingerprint) are compared
    by their logged metrics; otherwise both models are re-scored on the candidate's holdout,
    which needs ``con``. A promotion keeps the old champion as ``@previous`` and refreshes
    the champions the service loads (:func:`promote_through`).
    """
    checked = _check_kind(kind)
    margin = get_settings().promotion_margin if margin is None else margin

    def judge(candidate: ModelVersion, champion: str) -> tuple[bool, str]:
        cand_score, champ_score = _gate_scores(checked, candidate, champion, con, progress)
        decision = tracking.gate(checked, cand_score, champ_score, margin)
        return decision.passed, decision.reason

    return promote_through(checked, version, judge)


#: a gate: (the candidate's registered version, the champion's version) -> (passed, why)
Judge = Callable[["ModelVersion", str], tuple[bool, str]]


def promote_through(kind: str, version: str | int | None, judge: Judge) -> PromotionResult:
    """Promotion for every kind (churn, value, nba), with the kind's own gate ``judge``.

    ``version`` (default the ``@challenger``, else the latest) becomes ``@champion`` when
    there is none yet or when ``judge`` passes it; then the old champion is kept as
    ``@previous`` and the champions the service loads are refreshed
    (:func:`models.registry.set_champion`). Otherwise it is ``@challenger``, with the reason.
    """
    held = registry.aliases(kind)
    wanted = str(version) if version is not None else held.get(CHALLENGER)
    candidate = registry.get_version(kind, version=wanted)
    cand_version = str(candidate.version)
    champion = held.get(CHAMPION)
    if champion == cand_version:
        return PromotionResult(kind, champion, False, CHAMPION, "already the champion", champion)
    passed, reason = (True, "no champion yet") if champion is None else judge(candidate, champion)
    if not passed:
        registry.set_alias(kind, CHALLENGER, cand_version)
        return PromotionResult(kind, cand_version, False, CHALLENGER, reason, champion)
    change = registry.set_champion(kind, cand_version)
    bundled = (change.bundle, change.bundle_note)
    return PromotionResult(kind, cand_version, True, CHAMPION, reason, change.previous, *bundled)


def _gate_scores(
    kind: Kind, candidate: Any, champion: str, con: Any, progress: Progress | None
) -> tuple[float, float]:
    """(candidate, champion) gate metric on the same holdout."""
    metric = GATE_METRIC[kind][0]
    cand = registry.run_of(candidate).data
    champ = registry.run_of(registry.get_version(kind, version=champion)).data
    if cand.tags.get(HOLDOUT_TAG) and cand.tags.get(HOLDOUT_TAG) == champ.tags.get(HOLDOUT_TAG):
        return cand.metrics[f"test_{metric}"], champ.metrics[f"test_{metric}"]
    cand_cutoff = cand.tags["rapport.test_cutoff"]
    if champ.tags.get("rapport.test_cutoff", "") > cand_cutoff:
        raise ValueError(
            f"{kind} v{candidate.version} was evaluated on the holdout {cand_cutoff}, older "
            f"than the champion's ({champ.tags['rapport.test_cutoff']}); retrain it on the "
            "latest data before promoting"
        )
    if con is None:
        raise ValueError(
            f"{kind} v{candidate.version} and the champion v{champion} were evaluated on "
            "different holdouts; re-scoring both needs the warehouse (pass con)"
        )
    silent(progress)(f"re-scoring v{candidate.version} and v{champion} on {cand_cutoff}")
    horizon = int(cand.params["horizon_days"])
    frame = holdout(con, cand_cutoff, horizon)
    models = {
        "candidate": registry.load_model(kind, version=candidate.version)[0],
        "champion": registry.load_model(kind, version=champion)[0],
    }
    scored = evaluate_holdout(kind, models, frame, con, horizon, baselines=False)[0].metrics
    return scored["candidate"][metric], scored["champion"][metric]


# --- tune --------------------------------------------------------------------------------
@dataclass
class TuneResult:
    outcome: TuneOutcome
    train: TrainResult

    def summary(self) -> str:
        o = self.outcome
        params = ", ".join(f"{k}={v:.4g}" for k, v in o.best_params.items())
        return "\n".join(
            [
                f"study {o.study_name}: {o.trials_run} trials run ({o.pruned} pruned), "
                f"{o.completed_in_study} complete in the study",
                f"best validation score {o.best_value:.4f} with {params}",
                self.train.summary(),
            ]
        )


def _objective(
    kind: Kind, data: TrainingSet, fixed: Mapping[str, Any], seed: int
) -> Callable[..., float]:
    """Fit with proposed parameters, return the validation gate metric (to maximise)."""
    metric = GATE_METRIC[kind][0]

    def objective(params: dict[str, Any], callbacks: Sequence[Any]) -> float:
        model = fit_model(kind, data, {**fixed, **params}, seed, callbacks)
        return _valid_metrics(kind, model, data)[metric]

    return objective


def tune(
    kind: str,
    con: Any,
    trials: int,
    as_of: datetime | str | None = None,
    horizon_days: int | None = None,
    progress: Progress | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    study_name: str | None = None,
    data: TrainingSet | None = None,
    train_cutoffs: int = Window.train_cutoffs,
    step_months: int = Window.step_months,
    compare: Compare | None = None,
) -> TuneResult:
    """Optuna search on the validation cutoff, then a normal :func:`train` run with the
    best parameters (registered as ``@challenger``); trials are nested MLflow runs.

    ``params`` are fixed settings under the searched ones (threads, a round cap). The
    default study name ties a study to its data (kind, holdout cutoff, horizon, feature
    set) so that re-running resumes the same search. ``compare``: as for :func:`train`.
    """
    import mlflow

    kind, settings, say = _check_kind(kind), get_settings(), silent(progress)
    window = Window(as_of, horizon_days or settings.horizon_days, train_cutoffs, step_months)
    data = _training_data(con, data, window, say, kind)
    horizon = data.horizon_days
    name = study_name or f"{kind}-{data.plan.test:%Y%m%d}-h{horizon}-{data.spec_version}"
    experiment = tracking.configure()
    # churn reports its AUC; value its purchase classifier's log loss, negated
    metric, sign = ("auc", 1.0) if kind == "churn" else ("tweedie", -1.0)
    with mlflow.start_run(experiment_id=experiment, run_name=f"tune-{kind}"):
        mlflow.set_tags({"rapport.kind": kind, "optuna.study": name})
        outcome = optimise(
            _objective(kind, data, params or {}, settings.seed),
            lambda trial: PruningCallback(trial, metric, sign),
            trials,
            name,
            settings.optuna_storage_url,
            settings.seed,
            timeout,
            say,
        )
        mlflow.log_metric("best_valid_score", outcome.best_value)
        best = {**(params or {}), **outcome.best_params}
        result = train(
            kind,
            con,
            params=best,
            progress=say,
            data=data,
            run_name=f"{kind}-tuned",
            compare=compare,
        )
    return TuneResult(outcome, result)
