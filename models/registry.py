"""The one adapter to the MLflow model registry, for every model kind (churn, value, nba).

Training registers, promotes and rolls back through it; batch scoring and the service load
the champions through it. The store is the workspace's (``rapport.settings``: a SQLite file
``<home>/mlruns/mlflow.db`` by default); MLflow telemetry is off and its chatter kept to
warnings, so nothing here reaches the network.

Registered models are named after their kind and served by alias (``models:/churn@champion``):

* ``@challenger``: the newest trained version, waiting for the gate;
* ``@champion``: what batch scoring and the service use;
* ``@previous``: the champion it replaced, kept so that :func:`rollback` can restore it.

Each version is a pyfunc (:class:`models.pyfunc.RapportPyfunc`) around the pickled native
model; :func:`load_model` returns the native object, as the service and batch scoring need::

    churn_model, version = load_model("churn")   # models.churn.ChurnModel, "3"

Every change of champion (:func:`set_champion`, :func:`rollback`) also refreshes the copy
the BentoML service loads (:func:`models.bundle.refresh_bundle`), so a promotion through
the Python API leaves the served Bento as fresh as one through the CLI.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from features.segments import SegmentModel
from features.spec import FeatureSpec, default_spec
from models.catalog import Catalog, default_catalog
from rapport.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

    from features.control import ControlGroup
    from models.scorer import Scorer

Kind = Literal["churn", "value", "nba"]
#: registered models, in load order
KINDS: tuple[Kind, ...] = ("churn", "value", "nba")
#: the kinds scoring cannot do without (``nba`` is optional: without it the best action
#: is ``no_action``)
REQUIRED: tuple[Kind, ...] = ("churn", "value")
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
#: run tag holding the feature-set version a model was trained on
FEATURE_SET_TAG = "rapport.feature_set"
#: version tag: when the version last became ``@champion`` (ISO UTC)
CROWNED_TAG = "rapport.crowned_at"
#: what a loaded model needs, pinned to this environment's versions
REQUIREMENTS = ("lightgbm", "numpy", "pandas", "scikit-learn", "mlflow")


class ChampionsMissingError(LookupError):
    """No usable champion models: the message says what to run."""


def check_kind(kind: str) -> Kind:
    """``kind`` if it is a registered model kind; ValueError naming the valid ones."""
    if kind not in KINDS:
        raise ValueError(f"model kind must be one of {KINDS}, got {kind!r}")
    return kind  # type: ignore[return-value]


def model_name(kind: str) -> str:
    """Registered model name of a kind (the kind itself); rejects anything else."""
    return check_kind(kind)


# --------------------------------------------------------------------------- the store
def _offline() -> None:
    """No telemetry, no progress bars, warnings-only logs (before MLflow is used)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def tracking_uri() -> str:
    """The workspace's MLflow URI (its folders created), MLflow kept offline and quiet."""
    _offline()
    settings = get_settings()
    settings.ensure_home()
    return settings.tracking_uri


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence MLflow's info logs, its "Successfully registered" prints (to stderr) and its
    advisory warnings (pickling, pip, extra input columns) for the duration."""
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"mlflow(\..*)?")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def client(uri: str | None = None) -> MlflowClient:
    """A client on the workspace store (tracking and registry), or on ``uri``."""
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    with quiet():  # a new SQLite store warns about SQLAlchemy's deprecations
        # without registry_uri the registry follows MLflow's process-global URI
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def _pointed_at(uri: str) -> Iterator[None]:
    """MLflow's global URI (what ``models:/`` URIs resolve against) at ``uri`` for the
    duration only: ``set_tracking_uri`` is process global and also sets
    ``MLFLOW_TRACKING_URI``, which the settings would then read."""
    import mlflow

    env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# --------------------------------------------------------------------------- register
def signature(kind: str, model: Any) -> Any:
    """Every feature optional (nulls are meaningful); value also takes an ``as_of``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

    encoder = model.uplift.encoder_ if check_kind(kind) == "nba" else model.encoder_
    inputs: list[ColSpec | TensorSpec] = [
        ColSpec("string" if name in encoder.categories else "double", name, required=False)
        for name in model.feature_names
    ]
    if kind == "churn":
        outputs: list[ColSpec | TensorSpec] = [ColSpec("double", "p_churn")]
    elif kind == "value":
        from models.value import OUTPUT_COLUMNS

        # any type: MLflow's datetime refuses the tz-aware cutoffs feature frames carry
        inputs.append(ColSpec(AnyType(), "as_of", required=False))
        outputs = [ColSpec("double", n) for n in OUTPUT_COLUMNS]
    else:
        outputs = [
            ColSpec("double", f"uplift_{what}_{action}")
            for action in model.uplift.actions_
            for what in ("conversion", "revenue")
        ]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def register(kind: str, model: Any, example: pd.DataFrame) -> str:
    """Log ``model`` as a pyfunc in the active MLflow run, register it under its kind and
    return the new version (no alias: the caller decides, usually ``@challenger``)."""
    import mlflow

    from models.pyfunc import RapportPyfunc

    with tempfile.TemporaryDirectory() as tmp:
        native = Path(tmp) / "native.pkl"
        native.write_bytes(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        with quiet():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=RapportPyfunc(),
                artifacts={"native": str(native)},
                model_config={"kind": kind},
                signature=signature(kind, model),
                input_example=example[model.feature_names].reset_index(drop=True),
                registered_model_name=model_name(kind),
                pip_requirements=[f"{name}=={package_version(name)}" for name in REQUIREMENTS],
            )
    return str(info.registered_model_version)


# --------------------------------------------------------------------------- versions, aliases
def _hint(kind: str, alias: str | None) -> str:
    promote = f" and `rapport promote {kind}`" if alias == CHAMPION else ""
    return f"run `rapport train {kind}`{promote}"


def get_version(
    kind: str, alias: str | None = None, version: str | int | None = None
) -> ModelVersion:
    """A registered version by number, by alias, or the latest; LookupError if absent."""
    from mlflow.exceptions import MlflowException

    name, mlflow_client = model_name(kind), client()
    try:
        with quiet():
            if version is not None:
                return mlflow_client.get_model_version(name, str(version))
            if alias is not None:
                return mlflow_client.get_model_version_by_alias(name, alias)
            found = mlflow_client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        what = f"version {version}" if version else f"@{alias}" if alias else "any version"
        raise LookupError(
            f"no registered {name} model {what} ({_first_line(exc)}); {_hint(kind, alias)}"
        ) from None
    if not found:
        raise LookupError(f"no registered {name} model yet; {_hint(kind, None)}")
    return max(found, key=lambda v: int(v.version))


def versions(kind: str) -> list[ModelVersion]:
    """Every registered version of ``kind``, oldest first (empty when none)."""
    with quiet():
        found = client().search_model_versions(f"name = '{model_name(kind)}'")
    return sorted(found, key=lambda v: int(v.version))


def aliases(kind: str) -> dict[str, str]:
    """Alias -> version of a registered model (empty when nothing is registered)."""
    from mlflow.exceptions import MlflowException

    try:
        with quiet():
            registered = client().get_registered_model(model_name(kind))
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in registered.aliases.items()}


def set_alias(kind: str, alias: str, version: str | int) -> None:
    with quiet():
        client().set_registered_model_alias(model_name(kind), alias, str(version))


def delete_alias(kind: str, alias: str) -> None:
    with quiet():
        client().delete_registered_model_alias(model_name(kind), alias)


def run_of(version: ModelVersion) -> Run:
    """The run that produced a model version (its params, metrics and tags)."""
    with quiet():
        return client().get_run(str(version.run_id))


# --------------------------------------------------------------------------- monitoring reference
#: artifact of a training run: a sample of the feature snapshot the model was evaluated on,
#: with its scores, that the monitor compares scoring runs against (drift)
REFERENCE_ARTIFACT = "reference.parquet"
#: artifact beside it: the model's own holdout figures for the whole base and per ABC tier
#: and RFM segment (rows, realised and predicted rates, coverage, ...), which the monitor
#: judges the realised ones against (:func:`training.monitor.group_figures`)
GROUPS_ARTIFACT = "reference_groups.parquet"


def log_reference(frame: pd.DataFrame, groups: pd.DataFrame | None = None) -> None:
    """Store ``frame`` as the active run's monitoring reference, and ``groups`` (the
    holdout's figures per group) beside it, so they travel with the model version the run
    registers."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        for name, part in ((REFERENCE_ARTIFACT, frame), (GROUPS_ARTIFACT, groups)):
            if part is None:
                continue
            path = Path(tmp) / name
            part.to_parquet(path, index=False)
            with quiet():
                mlflow.log_artifact(str(path))


def load_reference(
    kind: str, version: str | int, artifact: str = REFERENCE_ARTIFACT
) -> pd.DataFrame | None:
    """The monitoring reference stored with ``kind`` version ``version`` (or its holdout
    figures per group: ``artifact=GROUPS_ARTIFACT``); None for a version trained before
    they were stored."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = str(get_version(kind, version=version).run_id)
    with tempfile.TemporaryDirectory() as tmp, quiet():
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=artifact,
                dst_path=tmp,
                tracking_uri=tracking_uri(),
            )
        except (MlflowException, OSError):
            return None
        return pd.read_parquet(path)


def run_metrics(kind: str, version: str | int) -> dict[str, float]:
    """The metrics logged by the run that trained ``kind`` version ``version`` (holdout
    figures the monitor compares realised ones with)."""
    return dict(run_of(get_version(kind, version=version)).data.metrics)


# --------------------------------------------------------------------------- champion changes
@dataclass(frozen=True)
class ChampionChange:
    """What moved ``kind@champion`` and whether the service's copy followed."""

    kind: str
    champion: str
    #: the champion before the change (now ``@previous``), None when there was none
    previous: str | None
    #: the BentoML tag of the refreshed champions bundle, None when not bundled
    bundle: str | None
    #: why the bundle was not refreshed (empty when it was)
    bundle_note: str = ""


def set_champion(kind: str, version: str | int) -> ChampionChange:
    """``version`` becomes ``kind@champion``; the champion it replaces is kept as
    ``@previous`` (for :func:`rollback`); a ``@challenger`` on ``version`` is removed; the
    service's bundle is refreshed. No gate here: the promotion jobs decide."""
    version = str(version)
    held = aliases(kind)
    before = held.get(CHAMPION)
    # @previous first: a process killed between the two moves keeps the old champion
    # serving and named twice, never a new champion without its predecessor
    if before is not None and before != version:
        set_alias(kind, PREVIOUS, before)
    tag_version(kind, version, {CROWNED_TAG: datetime.now(UTC).isoformat()})
    set_alias(kind, CHAMPION, version)
    if (before is None or before == version) and held.get(PREVIOUS) == version:
        delete_alias(kind, PREVIOUS)
    if held.get(CHALLENGER) == version:
        delete_alias(kind, CHALLENGER)
    return _bundled(kind, version, before)


def crowned_at(kind: str, version: ModelVersion) -> datetime:
    """When ``version`` last became the champion (its registration time if never tagged)."""
    stamp = (version.tags or {}).get(CROWNED_TAG)
    if stamp:
        return datetime.fromisoformat(stamp)
    return datetime.fromtimestamp(int(version.creation_timestamp) / 1000, UTC)


def rollback(kind: str, to: str | int | None = None) -> ChampionChange:
    """Swap ``kind@champion`` and ``kind@previous`` (so a second rollback undoes the first)
    and refresh the service's bundle; LookupError when there is no ``@previous``.

    ``to``: restore that registered version instead (the champion it replaces becomes
    ``@previous``); LookupError when it is not registered, ValueError when it already is
    the champion."""
    held = aliases(kind)
    if to is not None:
        wanted = str(get_version(kind, version=to).version)
        if held.get(CHAMPION) == wanted:
            raise ValueError(f"{model_name(kind)} v{wanted} already is the champion")
        return set_champion(kind, wanted)
    restored = held.get(PREVIOUS)
    if restored is None:
        raise LookupError(
            f"no {model_name(kind)}@{PREVIOUS} to roll back to: a champion is kept as "
            "previous only when a promotion replaces it"
        )
    current = held.get(CHAMPION)
    tag_version(kind, restored, {CROWNED_TAG: datetime.now(UTC).isoformat()})
    set_alias(kind, CHAMPION, restored)
    if current is None:
        delete_alias(kind, PREVIOUS)
    else:
        set_alias(kind, PREVIOUS, current)
    return _bundled(kind, restored, current)


def tag_version(kind: str, version: str | int, tags: dict[str, str]) -> None:
    """Set tags on a registered version (why it became or stopped being the champion)."""
    with quiet():
        mlflow_client = client()
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(model_name(kind), str(version), key, value)


def _bundled(kind: str, champion: str, previous: str | None) -> ChampionChange:
    # models.bundle reads the champions through this module: imported here, not at the top
    from models.bundle import refresh_bundle

    tag, note = refresh_bundle()
    return ChampionChange(kind, champion, previous, tag, note)


# --------------------------------------------------------------------------- load
def _load_native(name: str, version: str) -> Any:
    import mlflow

    with quiet():
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return pyfunc.unwrap_python_model().model


def load_model(
    kind: str, alias: str | None = CHAMPION, version: str | int | None = None
) -> tuple[Any, str]:
    """(native model, version) of ``kind@alias`` or of an exact version; LookupError if
    absent. The native model is a ``ChurnModel``, ``ValueModel`` or ``NbaModel``."""
    found = get_version(kind, alias=None if version else alias, version=version)
    with _pointed_at(tracking_uri()):
        return _load_native(model_name(kind), str(found.version)), str(found.version)


@dataclass
class Champions:
    """The native champion models, their registry versions and where they came from."""

    models: dict[str, Any]
    #: kind -> registered MLflow version
    versions: dict[str, str]
    #: kind -> feature-set version it was trained on (from its MLflow run)
    feature_sets: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def get(self, kind: str) -> Any:
        return self.models.get(kind)

    @property
    def churn(self) -> Any:
        return self.models.get("churn")

    @property
    def value(self) -> Any:
        return self.models.get("value")

    @property
    def nba(self) -> Any:
        return self.models.get("nba")

    @property
    def catalog(self) -> Catalog:
        """The NBA champion's catalog (the rules it was trained for), else the default."""
        return getattr(self.nba, "catalog", None) or default_catalog()


def load_champions(uri: str | None = None) -> Champions:
    """Every ``@champion`` of the workspace's registry (or of ``uri``): ``churn`` and
    ``value`` are required (:class:`ChampionsMissingError` names what to run), ``nba`` is
    optional."""
    from mlflow.exceptions import MlflowException

    _offline()
    uri = uri or tracking_uri()
    mlflow_client = client(uri)
    found: dict[Kind, ModelVersion] = {}
    with quiet():
        for kind in KINDS:
            try:
                found[kind] = mlflow_client.get_model_version_by_alias(kind, CHAMPION)
            except MlflowException:
                if kind in REQUIRED:
                    raise ChampionsMissingError(
                        f"no {kind}@{CHAMPION} in the MLflow registry {uri}: run "
                        f"`rapport train {kind}` and `rapport promote {kind}` (or `rapport demo`)"
                    ) from None
    champions = Champions({}, {}, source=f"mlflow:{uri}")
    with _pointed_at(uri):
        for name, version in found.items():
            champions.models[name] = _load_native(name, str(version.version))
            champions.versions[name] = str(version.version)
            with quiet():
                tags = mlflow_client.get_run(str(version.run_id)).data.tags
            if FEATURE_SET_TAG in tags:
                champions.feature_sets[name] = tags[FEATURE_SET_TAG]
    return champions


# --------------------------------------------------------------------------- use
def check_compatible(champions: Champions, spec: FeatureSpec) -> list[str]:
    """Problems that make the champions unusable with this feature spec (empty: fine):
    a model trained on another feature set, or reading columns neither the spec nor the
    scorer (churn, value, segments: the NBA model's uplift reads them) provides."""
    from models.scorer import ENRICHED_COLUMNS

    known = set(spec.names) | set(ENRICHED_COLUMNS)
    problems = []
    for kind, feature_set in champions.feature_sets.items():
        if feature_set != spec.version:
            problems.append(
                f"{kind} v{champions.versions[kind]} was trained on feature set "
                f"{feature_set}, the current one is {spec.version}: retrain and promote it"
            )
    for kind, model in champions.models.items():
        names = getattr(model, "feature_names", None) or []
        missing = sorted(set(names) - known)
        if missing:
            problems.append(f"{kind} needs features the spec lacks: {missing[:5]}")
    return problems


def build_scorer(
    champions: Champions,
    segments: SegmentModel,
    spec: FeatureSpec | None = None,
    catalog: Catalog | None = None,
    control: ControlGroup | None = None,
) -> Scorer:
    """The scorer over the champions (with the NBA champion's catalog unless given one),
    holding ``control``'s customers out of every action."""
    from models.scorer import Scorer

    return Scorer(
        champions.churn,
        champions.value,
        champions.nba,
        catalog or champions.catalog,
        segments,
        spec or default_spec(),
        dict(champions.versions),
        control,
    )
