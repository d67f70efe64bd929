"""Hyper-parameter search with Optuna: TPE, pruning on LightGBM's validation curve.

The study lives in the database from ``settings.optuna_storage_url`` (SQLite under the
workspace by default) and is opened with ``load_if_exists``: re-running the same command
resumes it, and several workers pointed at the same database share it. Each trial is a
nested MLflow run under the caller's active run.

Pruning: :class:`PruningCallback` is a LightGBM callback that reports the validation
metric to the trial every few boosting rounds and stops the trial when Optuna's median
pruner says it is worse than the median of earlier trials at the same round (the same job
as ``optuna-integration``'s callback, which is not a dependency here).

This module knows nothing about churn or value: the caller passes an ``objective`` that
fits with the proposed parameters (passing the callbacks to ``lightgbm.train``) and
returns the validation score to maximise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from training.datasets import Progress, silent

Objective = Callable[[dict[str, Any], Sequence[Any]], float]


def search_space(trial: optuna.Trial) -> dict[str, Any]:
    """LightGBM parameters worth searching; early stopping picks the number of rounds."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 7, 127, log=True),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 20, 400, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
    }


class PruningCallback:
    """Report ``metric`` on the ``valid`` set every ``every`` rounds; prune when told.

    ``sign`` turns a loss into a score (-1) so the study always maximises.
    """

    order = 25  # after LightGBM's own evaluation has filled evaluation_result_list

    def __init__(self, trial: optuna.Trial, metric: str, sign: float = 1.0, every: int = 5):
        self.trial = trial
        self.metric = metric
        self.sign = sign
        self.every = every

    def __call__(self, env: Any) -> None:
        step = env.iteration + 1
        if step % self.every:
            return
        for data_name, metric, value, _ in env.evaluation_result_list or ():
            if data_name == "valid" and metric == self.metric:
                self.trial.report(self.sign * float(value), step)
                if self.trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at round {step}: {metric} {value:.4f}")
                return


@dataclass(frozen=True)
class TuneOutcome:
    study_name: str
    best_params: dict[str, Any]
    best_value: float
    trials_run: int
    pruned: int
    completed_in_study: int


def optimise(
    objective: Objective,
    make_callback: Callable[[optuna.Trial], PruningCallback],
    trials: int,
    study_name: str,
    storage_url: str,
    seed: int,
    timeout: float | None = None,
    progress: Progress | None = None,
) -> TuneOutcome:
    """Run ``trials`` more trials of the shared study; each one a nested MLflow run."""
    import mlflow

    say = silent(progress)
    optuna.logging.set_verbosity(logging.WARNING)
    storage = optuna.storages.RDBStorage(
        storage_url, engine_kwargs={"connect_args": {"timeout": 60}}
    )
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=20),
    )
    # a resumed study continues the random sequence instead of replaying it
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    before = len(study.trials)

    parent = mlflow.active_run()
    experiment = parent.info.experiment_id if parent else None

    def run_trial(trial: optuna.Trial) -> float:
        params = search_space(trial)
        name = f"trial-{trial.number}"
        with mlflow.start_run(experiment_id=experiment, run_name=name, nested=True):
            mlflow.log_params(params)
            try:
                score = objective(params, [make_callback(trial)])
            except optuna.TrialPruned:
                mlflow.set_tag("optuna.state", "pruned")
                say(f"trial {trial.number}: pruned")
                raise
            mlflow.log_metric("valid_score", score)
            mlflow.set_tag("optuna.state", "complete")
        say(f"trial {trial.number}: {score:.4f}")
        return score

    study.optimize(run_trial, n_trials=trials, timeout=timeout)
    new = study.trials[before:]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"study {study_name!r} has no completed trial yet (all pruned)")
    return TuneOutcome(
        study_name=study_name,
        best_params=dict(study.best_params),
        best_value=float(study.best_value),
        trials_run=len(new),
        pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in new),
        completed_in_study=len(complete),
    )
