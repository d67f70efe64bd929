"""What the service runs on: the champion models, the scorer and the server process.

Champions come from the MLflow registry (``models:/<name>@champion``; ``churn`` and
``value`` are required, ``nba`` is optional) and are copied into the BentoML model store
as one model, ``rapport-champions`` (:func:`import_champions`, which ``rapport promote``
and ``rapport serve`` call), so that ``bentoml build`` packs them into a self-contained
Bento. The service loads that copy when the store has one and falls back to MLflow.

The BentoML home defaults to ``<RAPPORT_HOME>/bentoml`` (unless ``BENTOML_HOME`` is set)
so that two workspaces on one machine never serve each other's models. BentoML's usage
tracking and MLflow's telemetry are switched off: nothing here reaches the network.

:func:`serve` starts ``bentoml serve serving.service:Rapport`` with that environment.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.segments import SegmentModel
from features.spec import FeatureSpec, default_spec
from models.catalog import Catalog, default_catalog
from rapport.settings import Settings, get_settings

if TYPE_CHECKING:
    from models.scorer import Scorer

#: registered MLflow models, in load order; the first two are required
KINDS = ("churn", "value", "nba")
REQUIRED = ("churn", "value")
CHAMPION = "champion"
#: the BentoML model holding all champions
BENTO_MODEL = "rapport-champions"
CHAMPIONS_FILE = "champions.pkl"
SERVICE = "serving.service:Rapport"
#: BentoML settings of the service (and of the benchmark's no-op, so its floor is this one's)
SERVICE_OPTIONS: dict[str, Any] = {
    "workers": 1,
    "traffic": {"timeout": 30},
    "logging": {"access": {"enabled": False}},
    # BentoML's per-request Prometheus metrics (multiprocess files) cost ~30% of a /score
    # here; turn them back on with BENTOML_CONFIG_OPTIONS=services.rapport.metrics.enabled=true
    "metrics": {"enabled": False},
    # BentoML records an OpenTelemetry span for every request even at sample rate 0
    # (~20 objects each, kept alive in reference cycles until a full collection, which then
    # stalls requests for 20-100 ms); no spans unless configured, e.g.
    # BENTOML_CONFIG_OPTIONS="services.rapport.tracing.excluded_urls=[]"
    "tracing": {"excluded_urls": ["."]},
}
ROOT = Path(__file__).resolve().parents[1]
#: environment that keeps BentoML and MLflow off the network
OFFLINE_ENV = {
    "BENTOML_DO_NOT_TRACK": "True",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


class ChampionsMissingError(LookupError):
    """No usable champion models: the message says what to run."""


@dataclass
class Champions:
    """The native champion models and where they came from."""

    models: dict[str, Any]
    #: model name -> registered MLflow version
    versions: dict[str, str]
    #: model name -> feature-set version it was trained on (from its MLflow run)
    feature_sets: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def get(self, kind: str) -> Any:
        return self.models.get(kind)


def bentoml_home(settings: Settings | None = None) -> Path:
    """``BENTOML_HOME`` if set, else ``<RAPPORT_HOME>/bentoml``."""
    if os.environ.get("BENTOML_HOME"):
        return Path(os.environ["BENTOML_HOME"]).expanduser().absolute()
    return (settings or get_settings()).home / "bentoml"


def offline() -> None:
    """Set the no-network defaults in this process (before importing mlflow / bentoml)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


# --------------------------------------------------------------------------- MLflow
def load_champions_from_mlflow(tracking_uri: str) -> Champions:
    """Native ``@champion`` models from the registry (``nba`` may be absent)."""
    offline()
    import logging

    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    champions = Champions({}, {}, source=f"mlflow:{tracking_uri}")
    with _tracking_uri(tracking_uri):
        _load_champions(client, champions)
    return champions


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow pointed at ``uri`` for the duration only: ``set_tracking_uri`` is process
    global and also sets ``MLFLOW_TRACKING_URI``, which the settings would then read."""
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


def _load_champions(client: Any, champions: Champions) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking_uri = champions.source.removeprefix("mlflow:")
    for kind in KINDS:
        try:
            version = client.get_model_version_by_alias(kind, CHAMPION)
        except MlflowException:
            if kind in REQUIRED:
                raise ChampionsMissingError(
                    f"no {kind}@{CHAMPION} in the MLflow registry {tracking_uri}: run "
                    f"`rapport train {kind}` and `rapport promote {kind}` (or `rapport demo`)"
                ) from None
            continue
        pyfunc = mlflow.pyfunc.load_model(f"models:/{kind}/{version.version}")
        champions.models[kind] = pyfunc.unwrap_python_model().model
        champions.versions[kind] = str(version.version)
        tags = client.get_run(str(version.run_id)).data.tags
        if "rapport.feature_set" in tags:
            champions.feature_sets[kind] = tags["rapport.feature_set"]


# --------------------------------------------------------------------------- BentoML store
def _model_store(settings: Settings | None = None) -> Any:
    from bentoml._internal.models import ModelStore

    home = bentoml_home(settings)
    (home / "models").mkdir(parents=True, exist_ok=True)
    return ModelStore(str(home / "models"))


def bundled_champions(settings: Settings | None = None) -> Any | None:
    """The latest ``rapport-champions`` model in the local BentoML store, or None."""
    offline()
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(f"{BENTO_MODEL}:latest", _model_store=_model_store(settings))
    except NotFound:
        return None


def bundled_ref() -> Any | None:
    """A reference to the latest champions in BentoML's own store (``BENTOML_HOME``) for
    the service class, so that ``bentoml build`` packs them; None when there are none."""
    offline()
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(f"{BENTO_MODEL}:latest")
    except NotFound:
        return None
    return bentoml.models.BentoModel(model.tag)


def import_champions(settings: Settings | None = None) -> str:
    """Copy the MLflow champions into the BentoML store; returns the BentoML tag.

    Idempotent: when the latest copy holds the same versions, nothing new is written.
    """
    settings = settings or get_settings()
    champions = load_champions_from_mlflow(settings.tracking_uri)
    latest = bundled_champions(settings)
    if latest is not None and latest.info.metadata.get("versions") == champions.versions:
        return str(latest.tag)
    return bundle_champions(champions, settings)


def bundle_champions(champions: Champions, settings: Settings | None = None) -> str:
    """Write ``champions`` as a new ``rapport-champions`` version; returns its tag."""
    settings = settings or get_settings()
    offline()
    import bentoml

    metadata = {
        "versions": champions.versions,
        "feature_sets": champions.feature_sets,
        "tracking_uri": settings.tracking_uri,
    }
    labels = {kind: f"v{version}" for kind, version in champions.versions.items()}
    with bentoml.models.create(
        BENTO_MODEL, labels=labels, metadata=metadata, _model_store=_model_store(settings)
    ) as model:
        champions.source = f"bentoml:{model.tag}"
        path = Path(model.path_of(CHAMPIONS_FILE))
        path.write_bytes(pickle.dumps(champions, protocol=pickle.HIGHEST_PROTOCOL))
    return str(model.tag)


def load_champions_from_bento(model: Any) -> Champions:
    """The champions pickled by :func:`import_champions` into a BentoML model folder."""
    champions: Champions = pickle.loads(Path(model.path_of(CHAMPIONS_FILE)).read_bytes())
    champions.source = f"bentoml:{model.tag}"
    return champions


def load_champions(settings: Settings | None = None, bundled: Any = None) -> Champions:
    """The BentoML copy (``bundled``, or the latest in the store) else the MLflow ones."""
    settings = settings or get_settings()
    model = bundled if bundled is not None else bundled_champions(settings)
    if model is not None:
        return load_champions_from_bento(model)
    return load_champions_from_mlflow(settings.tracking_uri)


# --------------------------------------------------------------------------- scorer
def check_compatible(champions: Champions, spec: FeatureSpec) -> list[str]:
    """Problems that make the champions unusable with this feature spec (empty: fine).

    Models may read the spec's features and the columns the scorer adds (churn, value,
    segments: the NBA model's uplift does)."""
    from models.scorer import ENRICHED_COLUMNS

    known = set(spec.names) | set(ENRICHED_COLUMNS)
    problems = []
    for kind, features_set in champions.feature_sets.items():
        if features_set != spec.version:
            problems.append(
                f"{kind} v{champions.versions[kind]} was trained on feature set "
                f"{features_set}, the service computes {spec.version}: retrain and promote"
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
) -> Scorer:
    """The pure scorer over the champions (the NBA model's catalog when it carries one)."""
    from models.scorer import Scorer

    nba = champions.get("nba")
    catalog = catalog or getattr(nba, "catalog", None) or default_catalog()
    return Scorer(
        champions.get("churn"),
        champions.get("value"),
        nba,
        catalog,
        segments,
        spec or default_spec(),
        dict(champions.versions),
    )


def load_scorer_from_mlflow(
    tracking_uri: str, segments: SegmentModel, spec: FeatureSpec | None = None
) -> Scorer:
    """A scorer over the registry's champions (notebooks, batch jobs)."""
    return build_scorer(load_champions_from_mlflow(tracking_uri), segments, spec)


# --------------------------------------------------------------------------- server
def server_env(
    settings: Settings | None = None,
    workers: int | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a ``bentoml serve`` of this workspace."""
    settings = settings or get_settings()
    env = dict(os.environ if base is None else base)
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    env.setdefault("OMP_NUM_THREADS", "1")  # one-row predictions: workers, not threads
    env["RAPPORT_HOME"] = str(settings.home)
    env.setdefault("BENTOML_HOME", str(bentoml_home(settings)))
    if workers:
        options = [o for o in env.get("BENTOML_CONFIG_OPTIONS", "").split() if o]
        options.append(f"services.rapport.workers={int(workers)}")
        env["BENTOML_CONFIG_OPTIONS"] = " ".join(options)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def serve_command(host: str = "127.0.0.1", port: int = 3000, service: str = SERVICE) -> list[str]:
    """``bentoml serve serving.service:Rapport`` (or another ``service``, e.g. the bench's
    no-op) with this interpreter's BentoML."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        service,
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(ROOT),
    ]


def serve(
    host: str = "127.0.0.1",
    port: int = 3000,
    workers: int | None = None,
    settings: Settings | None = None,
) -> None:
    """Replace this process by the BentoML server (what ``rapport serve`` runs).

    ``workers``: server processes (default: the service's setting, one per core up to 4).
    """
    settings = settings or get_settings()
    settings.ensure_home()
    command = serve_command(host, port)
    os.execve(command[0], command, server_env(settings, workers))
