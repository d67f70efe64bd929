"""The champions as the service loads them: one BentoML model, ``rapport-champions``.

Every change of champion (:func:`models.registry.set_champion`, used by ``rapport promote``
and the promotion jobs alike, and :func:`models.registry.rollback`) calls
:func:`refresh_bundle`, which copies the registry's ``@champion`` models into the BentoML
model store (:func:`import_champions`), so that ``bentoml build`` packs them into a
self-contained Bento and a served Bento never lags the registry. The service loads that
copy when the store has one and falls back to the MLflow registry
(:func:`load_for_serving`).

The BentoML home defaults to ``<RAPPORT_HOME>/bentoml`` (unless ``BENTOML_HOME`` is set) so
that two workspaces on one machine never serve each other's models. BentoML's usage
tracking and MLflow's telemetry are switched off: nothing here reaches the network.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from models.registry import (
    CHAMPION,
    KINDS,
    Champions,
    ChampionsMissingError,
    aliases,
    load_champions,
)
from rapport.settings import Settings, get_settings

#: the BentoML model holding all champions
BENTO_MODEL = "rapport-champions"
CHAMPIONS_FILE = "champions.pkl"
#: layout of ``champions.pkl``; a bundle of another layout is re-made by import_champions
BUNDLE_FORMAT = 2
#: environment that keeps BentoML and MLflow off the network
OFFLINE_ENV = {
    "BENTOML_DO_NOT_TRACK": "True",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def bentoml_home(settings: Settings | None = None) -> Path:
    """``BENTOML_HOME`` if set, else ``<RAPPORT_HOME>/bentoml``."""
    if os.environ.get("BENTOML_HOME"):
        return Path(os.environ["BENTOML_HOME"]).expanduser().absolute()
    return (settings or get_settings()).home / "bentoml"


def offline() -> None:
    """Set the no-network defaults in this process (before importing mlflow / bentoml)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def _model_store(settings: Settings | None = None) -> Any:
    from bentoml._internal.models import ModelStore

    home = bentoml_home(settings)
    (home / "models").mkdir(parents=True, exist_ok=True)
    return ModelStore(str(home / "models"))


def bundled_champions(settings: Settings | None = None) -> Any | None:
    """The latest ``rapport-champions`` model in the workspace's BentoML store, or None."""
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
    """Copy the registry's champions into the BentoML store; returns the BentoML tag.

    Idempotent: when the latest copy holds the same versions, nothing new is written.
    :class:`ChampionsMissingError` when ``churn`` or ``value`` has no champion.
    """
    settings = settings or get_settings()
    champions = load_champions(settings.tracking_uri)
    latest = bundled_champions(settings)
    if (
        latest is not None
        and latest.info.metadata.get("versions") == champions.versions
        and latest.info.metadata.get("format") == BUNDLE_FORMAT
    ):
        return str(latest.tag)
    return bundle_champions(champions, settings)


def refresh_bundle(settings: Settings | None = None) -> tuple[str | None, str]:
    """(tag, "") after :func:`import_champions`, or (None, why) when the champions are not
    complete yet: a promotion is never undone because the bundle could not follow."""
    try:
        return import_champions(settings), ""
    except ChampionsMissingError as exc:
        return None, str(exc)


def bundle_champions(champions: Champions, settings: Settings | None = None) -> str:
    """Write ``champions`` as a new ``rapport-champions`` version; returns its tag."""
    settings = settings or get_settings()
    offline()
    import bentoml

    metadata = {
        "versions": champions.versions,
        "feature_sets": champions.feature_sets,
        "tracking_uri": settings.tracking_uri,
        "format": BUNDLE_FORMAT,
    }
    labels = {kind: f"v{version}" for kind, version in champions.versions.items()}
    content = {
        "models": champions.models,
        "versions": champions.versions,
        "feature_sets": champions.feature_sets,
    }
    with bentoml.models.create(
        BENTO_MODEL, labels=labels, metadata=metadata, _model_store=_model_store(settings)
    ) as model:
        path = Path(model.path_of(CHAMPIONS_FILE))
        path.write_bytes(pickle.dumps(content, protocol=pickle.HIGHEST_PROTOCOL))
    champions.source = f"bentoml:{model.tag}"
    return str(model.tag)


def load_bundle(model: Any) -> Champions:
    """The champions :func:`bundle_champions` wrote into a BentoML model folder."""
    content = pickle.loads(Path(model.path_of(CHAMPIONS_FILE)).read_bytes())
    return Champions(
        content["models"], content["versions"], content["feature_sets"], f"bentoml:{model.tag}"
    )


def load_for_serving(settings: Settings | None = None, bundled: Any = None) -> Champions:
    """The BentoML copy (``bundled``, or the latest in the store) else the registry's."""
    settings = settings or get_settings()
    model = bundled if bundled is not None else bundled_champions(settings)
    if model is not None:
        return load_bundle(model)
    return load_champions(settings.tracking_uri)


def marker_of(champions: Champions) -> str:
    """What identifies loaded champions for :func:`champions_marker`: the bundle's tag, or
    the registry versions when they were loaded from MLflow."""
    if champions.source.startswith("bentoml:"):
        return champions.source
    return "mlflow:" + ",".join(f"{k}={v}" for k, v in sorted(champions.versions.items()))


def champions_marker(settings: Settings | None = None) -> str:
    """What :func:`load_for_serving` would load now, cheaply (no model read): the latest
    bundle's tag (a new one after every promotion and rollback), else the registry's
    ``@champion`` versions. The service reloads when it differs from :func:`marker_of`
    what it serves."""
    return latest_marker(settings)[0]


def latest_marker(settings: Settings | None = None) -> tuple[str, Any | None]:
    """:func:`champions_marker` and the bundle it names (None without one), for
    :func:`load_for_serving` to load that very bundle without looking it up again."""
    settings = settings or get_settings()
    model = bundled_champions(settings)
    if model is not None:
        return f"bentoml:{model.tag}", model
    held = {kind: aliases(kind).get(CHAMPION) for kind in KINDS}
    marker = ",".join(f"{k}={v}" for k, v in sorted(held.items()) if v is not None)
    return "mlflow:" + marker, None
