"""MLflow: the tracking store, what a run logs, the registry, aliases and the promotion gate.

The store is the SQLite file from ``rapport.settings`` (``<home>/mlruns/mlflow.db``) with
artifacts under ``<home>/mlruns/artifacts``; MLflow telemetry is switched off and its
chatter kept to warnings, so nothing here reaches the network.

Models are logged as MLflow *pyfunc* models "from code": the wrapper class is written
into the model's artifacts (:data:`PYFUNC_CODE`), and the fitted estimator is pickled
next to it. Loading a model therefore imports ``models`` only, never ``training`` -- the
service may load what training logged without breaking the import rule. To get the
fast native object back (what ``serving/`` should do)::

    import mlflow
    mlflow.set_tracking_uri(get_settings().tracking_uri)
    pyfunc = mlflow.pyfunc.load_model("models:/churn@champion")
    churn_model = pyfunc.unwrap_python_model().model   # models.churn.ChurnModel

(``value`` gives a ``models.value.ValueModel``; :func:`load_model` does exactly this.)
``pyfunc.predict(feature_frame)`` returns a frame with ``p_churn`` (churn) or
``value_mean, value_p10, value_p50, value_p90`` (value).
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from rapport.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

    from models.churn import ChurnModel
    from models.value import ValueModel

Kind = Literal["churn", "value"]
KINDS: tuple[Kind, ...] = ("churn", "value")
EXPERIMENT = "rapport"
CHAMPION = "champion"
CHALLENGER = "challenger"
#: the holdout metric the gate compares, and whether higher is better
GATE_METRIC: dict[Kind, tuple[str, bool]] = {"churn": ("auc", True), "value": ("spearman", True)}
#: tag holding "test cutoff | horizon | data fingerprint": equal tags = the same holdout
HOLDOUT_TAG = "rapport.holdout"

PYFUNC_CODE = '''"""Rapport pyfunc wrapper, written by training.tracking (models from code)."""

import pickle

import mlflow
import pandas as pd


class RapportPyfunc(mlflow.pyfunc.PythonModel):
    """Predicts from a feature frame; ``.model`` is the native ChurnModel / ValueModel."""

    def load_context(self, context):
        with open(context.artifacts["native"], "rb") as handle:
            self.model = pickle.load(handle)
        self.kind = context.model_config["kind"]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if self.kind == "churn":
            return pd.DataFrame({"p_churn": self.model.predict_proba(model_input)})
        return self.model.predict(model_input).reset_index(drop=True)


mlflow.models.set_model(RapportPyfunc())
'''


def model_name(kind: str) -> str:
    """Registered model name of a kind (``churn`` / ``value``); rejects anything else."""
    if kind not in KINDS:
        raise ValueError(f"model kind must be one of {KINDS}, got {kind!r}")
    return kind


def configure() -> str:
    """Point MLflow at the workspace store (creating it), make the ``rapport`` experiment
    the active one and return its id. Call before any other MLflow use; cheap to repeat.
    """
    import mlflow

    mlflow.set_tracking_uri(_offline())
    with quiet():
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            mlflow.create_experiment(EXPERIMENT, artifact_location=get_settings().artifact_root)
        # also the default for runs started without an experiment (nested ones, notebooks)
        return str(mlflow.set_experiment(EXPERIMENT).experiment_id)


def _offline() -> str:
    """No telemetry, no progress bars, warnings-only logs; the workspace's tracking URI."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
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


def client() -> MlflowClient:
    """A client on the workspace store (tracking and registry)."""
    from mlflow import MlflowClient

    uri = _offline()
    # without registry_uri the registry follows MLflow's process-global URI
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def signature(kind: Kind, model: ChurnModel | ValueModel) -> Any:
    """Every feature optional (nulls are meaningful); value also takes an ``as_of``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

    cats = model.encoder_.categories
    inputs: list[ColSpec | TensorSpec] = [
        ColSpec("string" if name in cats else "double", name, required=False)
        for name in model.feature_names
    ]
    if kind == "value":
        from models.value import OUTPUT_COLUMNS

        # any type: MLflow's datetime refuses the tz-aware cutoffs feature frames carry
        inputs.append(ColSpec(AnyType(), "as_of", required=False))
        outputs: list[ColSpec | TensorSpec] = [ColSpec("double", n) for n in OUTPUT_COLUMNS]
    else:
        outputs = [ColSpec("double", "p_churn")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def log_model(kind: Kind, model: ChurnModel | ValueModel, example: pd.DataFrame) -> str:
    """Log ``model`` as a pyfunc in the active run, register it, return the new version."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "rapport_pyfunc.py"
        code.write_text(PYFUNC_CODE)
        native = Path(tmp) / "native.pkl"
        native.write_bytes(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        with quiet():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(code),
                artifacts={"native": str(native)},
                model_config={"kind": kind},
                signature=signature(kind, model),
                input_example=example[model.feature_names].reset_index(drop=True),
                registered_model_name=model_name(kind),
                pip_requirements=_requirements(),
            )
    return str(info.registered_model_version)


def _requirements() -> list[str]:
    """Pinned versions of what a loaded model needs, without MLflow's slow inference."""
    from importlib.metadata import version

    packages = ("lightgbm", "numpy", "pandas", "scikit-learn", "mlflow")
    return [f"{name}=={version(name)}" for name in packages]


def get_version(kind: str, alias: str | None = None, version: str | None = None) -> ModelVersion:
    """A registered version by number, by alias, or the latest; LookupError if absent."""
    from mlflow.exceptions import MlflowException

    name, mlflow_client = model_name(kind), client()
    try:
        with quiet():
            if version is not None:
                return mlflow_client.get_model_version(name, str(version))
            if alias is not None:
                return mlflow_client.get_model_version_by_alias(name, alias)
            versions = mlflow_client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        what = f"version {version}" if version else f"@{alias}" if alias else "any version"
        raise LookupError(f"no registered {name} model {what} ({_first_line(exc)})") from None
    if not versions:
        raise LookupError(f"no registered {name} model yet; run `rapport train {name}`")
    return max(versions, key=lambda v: int(v.version))


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def aliases(kind: str) -> dict[str, str]:
    """Alias -> version of a registered model (empty when nothing is registered)."""
    from mlflow.exceptions import MlflowException

    try:
        with quiet():
            registered = client().get_registered_model(model_name(kind))
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in registered.aliases.items()}


def set_alias(kind: str, alias: str, version: str) -> None:
    with quiet():
        client().set_registered_model_alias(model_name(kind), alias, str(version))


def delete_alias(kind: str, alias: str) -> None:
    with quiet():
        client().delete_registered_model_alias(model_name(kind), alias)


def load_model(kind: str, alias: str = CHAMPION, version: str | None = None) -> tuple[Any, str]:
    """(native ChurnModel / ValueModel, version) of ``kind@alias`` (or an exact version)."""
    import mlflow

    found = get_version(kind, alias=None if version else alias, version=version)
    mlflow.set_tracking_uri(_offline())
    with quiet():
        pyfunc = mlflow.pyfunc.load_model(f"models:/{model_name(kind)}/{found.version}")
    return pyfunc.unwrap_python_model().model, str(found.version)


def run_of(version: ModelVersion) -> Run:
    """The run that produced a model version (its params, metrics and tags)."""
    with quiet():
        return client().get_run(str(version.run_id))


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def gate(kind: Kind, candidate: float, champion: float, margin: float) -> GateDecision:
    """Does the candidate beat the champion by more than ``margin`` on the gate metric?"""
    metric, higher_is_better = GATE_METRIC[kind]
    gain = candidate - champion if higher_is_better else champion - candidate
    scores = f"{metric} {candidate:.4f} vs champion {champion:.4f}"
    if gain > margin:
        return GateDecision(True, f"{scores}: better by {gain:.4f} (> margin {margin:g})")
    return GateDecision(False, f"{scores}: not better by more than the margin {margin:g}")
