"""Benchmark training: dataset build, churn and value, one Optuna trial, batch prediction.

    uv run python -m bench.training --customers 20000
    uv run python -m bench.training --customers 100000 --train-cutoffs 1
    uv run python -m bench.training --warehouse path/to/warehouse.duckdb

Runs in a fresh temporary workspace (MLflow store, Optuna study): generates and ingests
the demo data (unless ``--warehouse`` is given), then times each step with its peak
memory (RSS sampled every 20 ms while it runs): the time-split dataset, the churn and value
estimators alone (``jobs.fit_model``) and as the full job (``jobs.train``: fit, holdout
evaluation next to the baselines and, as in the demo, the ground truth
(:mod:`rapport.truth`), plots, report, MLflow logging and registration), and ``jobs.tune``
with one trial (the trial, then the train run with the best parameters). Then the holdout
quality next to the baselines, and batch prediction rows/s through the model API next to
raw ``Booster.predict`` on the same rows. Prints figures only; never fails on timing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

STEPS: list[tuple[str, float, str, float]] = []


@contextmanager
def step(label: str, rows: Callable[[], str] = lambda: "") -> Iterator[None]:
    """Time the block and sample its peak resident memory."""
    process = psutil.Process()
    peak = [process.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        STEPS.append((label, seconds, rows(), peak[0] / 2**20))
        print(f"  {label}: {seconds:.1f} s", flush=True)


def rows_per_second(fn: Callable[[], Any], rows: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return rows / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--warehouse", type=Path, help="existing warehouse (else generated)")
    parser.add_argument("--horizon", type=int, default=90, help="label horizon in days")
    parser.add_argument("--train-cutoffs", type=int, default=4)
    parser.add_argument("--step-months", type=int, default=3)
    parser.add_argument("--predict-rows", type=int, default=200_000)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rapport-bench-training-") as tmp:
        os.environ["RAPPORT_HOME"] = tmp
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("RAPPORT_OPTUNA_STORAGE", None)
        run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> None:
    import optuna

    from features.warehouse import connect
    from models.churn import ChurnModel, booster_predict
    from models.value import ValueModel
    from rapport.demo_data import generate, write
    from rapport.settings import get_settings, reset_settings
    from rapport.truth import compare_holdout, ingest_demo
    from training import jobs
    from training.datasets import Window, build_training_set

    reset_settings()
    settings = get_settings()
    print(f"workspace {tmp}; {psutil.cpu_count()} CPUs")
    if args.warehouse:
        con = connect(args.warehouse, read_only=True)
        source = str(args.warehouse)
    else:
        with step("generate demo data", lambda: f"{args.customers:,} customers"):
            data = generate(args.customers, args.seed, horizon_days=args.horizon)
            folder = write(data, tmp / "data", "parquet")["customers"].parent
        con = connect(tmp / "warehouse.duckdb")
        with step("ingest", lambda: f"{sum(t.read for t in report.tables.values()):,} rows"):
            report = ingest_demo(con, folder, now=datetime.now(UTC))
        source = f"demo data, {args.customers:,} customers, seed {args.seed}"
    print(f"data: {source}")

    with step("dataset build", lambda: f"{len(ds.frame):,} rows x {len(ds.feature_names)}"):
        window = Window(
            horizon_days=args.horizon,
            train_cutoffs=args.train_cutoffs,
            step_months=args.step_months,
        )
        ds = build_training_set(con, window)
    counts = ds.counts()
    active = f"{counts['active_train']:,} train / {counts['active_valid']:,} valid rows"
    everyone = f"{counts['rows_train']:,} train / {counts['rows_valid']:,} valid rows"
    with step("churn fit (estimator)", lambda: active):
        jobs.fit_model("churn", ds, seed=settings.seed)
    with step("churn train job", lambda: "fit + holdout + MLflow"):
        churn = jobs.train("churn", con, data=ds, compare=compare_holdout)
    with step("value fit (estimator)", lambda: everyone):
        jobs.fit_model("value", ds, seed=settings.seed)
    with step("value train job", lambda: "fit + holdout + MLflow"):
        value = jobs.train("value", con, data=ds, compare=compare_holdout)
    with step("tune churn, 1 trial", lambda: f"trial {trial_s:.1f} s + train run"):
        tuned = jobs.tune("churn", con, 1, data=ds, compare=compare_holdout)
        study = optuna.load_study(
            study_name=tuned.outcome.study_name, storage=settings.optuna_storage_url
        )
        duration = study.trials[-1].duration
        trial_s = duration.total_seconds() if duration else float("nan")

    print(f"\nplan: {ds.plan.describe()}; horizon {args.horizon} days")
    print(f"\n{'step':<24} {'seconds':>8}  {'peak RSS MB':>11}  rows")
    for label, seconds, rows, peak in STEPS:
        print(f"{label:<24} {seconds:8.1f}  {peak:11,.0f}  {rows}")

    print("\nholdout quality (models next to their baselines):")
    print(churn.evaluation.summary())
    print(value.evaluation.summary())

    test = ds.part("test")
    repeat = max(1, -(-args.predict_rows // len(test)))
    frame = pd.concat([test] * repeat, ignore_index=True)
    n = len(frame)
    cm, vm = churn.model, value.model
    assert isinstance(cm, ChurnModel) and isinstance(vm, ValueModel)
    xc, xv = cm.encode(frame), vm.encode(frame)
    as_of = frame["as_of"].to_numpy()
    figures = {
        "churn predict_proba(frame)": rows_per_second(lambda: cm.predict_proba(frame), n),
        "churn predict_proba_array(X)": rows_per_second(lambda: cm.predict_proba_array(xc), n),
        "churn raw Booster.predict(X)": rows_per_second(
            lambda: booster_predict(cm.booster_, xc, raw_score=True), n
        ),
        "value predict(frame)": rows_per_second(lambda: vm.predict(frame), n),
        "value predict_array(X)": rows_per_second(lambda: vm.predict_array(xv, as_of), n),
        "value raw Booster.predict(X)": rows_per_second(
            lambda: booster_predict(vm.booster_, xv, raw_score=True), n
        ),
    }
    print(f"\nbatch prediction on {n:,} holdout rows (best of 3):")
    for label, rate in figures.items():
        print(f"  {label:<34} {rate:>12,.0f} rows/s")
    print(
        "  (frame = encoding + boosters + calibration / bands; X = already encoded; "
        f"LightGBM threads {cm.params.get('num_threads')})"
    )
    print(f"sanity: mean p(churn) {np.mean(cm.predict_proba(test)):.3f}")


if __name__ == "__main__":
    main()
