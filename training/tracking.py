"""MLflow run tracking: the experiment, what a run logs beside its model, and the gate.

The store is the workspace's (``rapport.settings``); models, versions and aliases are the
registry's business (:mod:`models.registry`, which training, batch scoring and the service
share). Here: the ``rapport`` experiment (:func:`configure`), the folder of artifacts every
training run logs (:func:`artifacts`) and the promotion gate for churn and value
(:func:`gate`; the NBA gate is off-policy, see :mod:`training.nba`).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from models.registry import quiet, tracking_uri
from rapport.settings import get_settings
from training.report import Report

#: the kinds :mod:`training.jobs` trains and gates on a labelled holdout (``nba`` has its
#: own job and gate in :mod:`training.nba`; the registry holds all three)
Kind = Literal["churn", "value"]
KINDS: tuple[Kind, ...] = ("churn", "value")
EXPERIMENT = "rapport"
#: the holdout metric the gate compares, and whether higher is better
GATE_METRIC: dict[Kind, tuple[str, bool]] = {"churn": ("auc", True), "value": ("spearman", True)}
#: tag holding "test cutoff | horizon | data fingerprint": equal tags = the same holdout
HOLDOUT_TAG = "rapport.holdout"


def configure(name: str = EXPERIMENT) -> str:
    """Point MLflow at the workspace store (creating it), make the experiment ``name``
    (default ``rapport``; monitoring logs to ``rapport-monitoring``) the active one and
    return its id. Call before any other MLflow use; cheap to repeat.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    with quiet():
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            mlflow.create_experiment(name, artifact_location=get_settings().artifact_root)
        # also the default for runs started without an experiment (nested ones, notebooks)
        return str(mlflow.set_experiment(name).experiment_id)


@contextlib.contextmanager
def artifacts(
    report: Report, figures: Sequence[tuple[str, bytes]], info: Mapping[str, Any]
) -> Iterator[Path]:
    """A folder holding the figures (``<name>.png``), ``report.html`` and the data lineage
    (``lineage.json``) for the caller to add its tables to; logged to the active run when
    the block ends."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, image in figures:
            (folder / f"{name}.png").write_bytes(image)
        (folder / "report.html").write_text(report.to_html(), encoding="utf-8")
        (folder / "lineage.json").write_text(json.dumps(dict(info), indent=2, default=str))
        yield folder
        mlflow.log_artifacts(str(folder))


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
