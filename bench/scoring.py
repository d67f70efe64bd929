"""Benchmark batch scoring: the full ``rapport score`` path next to raw ``Booster.predict``.

    RAPPORT_HOME=/path/to/workspace uv run python -m bench.scoring
    uv run python -m bench.scoring --warehouse w.duckdb --tracking-uri sqlite:///m/mlflow.db

The workspace needs a warehouse with the contract tables and ``churn@champion`` /
``value@champion`` in its MLflow registry (models trained on a small demo score any
size). Prints, in one run on the same customers:

* the full path (:func:`training.scoring.score_all`: load the champions, build features,
  fit and store segments, score in chunks -- churn, value, segments, arbitration -- and
  append to ``scores``) with the time of each stage and rows/s;
* raw LightGBM ``Booster.predict`` of the churn booster, the value model's booster
  and (with an NBA champion) the uplift boosters on the same rows (matrices already
  encoded), i.e. the floor any scoring path pays, and the Scorer on the prebuilt
  features without writing (with the run's segment model).

The benchmark's run is deleted from ``scores`` / ``score_runs`` afterwards, and its segment
model from ``segment_models`` unless it was there before (``--keep`` keeps them). Never
fails on timing.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from features.batch import build
from features.spec import default_spec
from features.tables.scores import RUNS, SCORES
from features.tables.segments import SEGMENT_MODELS, load_version
from features.warehouse import connect, raw
from models.registry import build_scorer, load_champions
from rapport.settings import get_settings, reset_settings
from training.scoring import score_all


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stored_segments(con: Any) -> set[str]:
    """Versions in ``segment_models``: the bench deletes only the one it adds."""
    if SEGMENT_MODELS not in con.list_tables():
        return set()
    return {row[0] for row in raw(con).execute(f"SELECT version FROM {SEGMENT_MODELS}").fetchall()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warehouse", default=None, help="DuckDB warehouse (default: workspace)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store with the champions")
    parser.add_argument("--as-of", default=None, help="Cutoff (default: now)")
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    parser.add_argument("--keep", action="store_true", help="Keep the benchmark's scores run")
    args = parser.parse_args()
    if args.warehouse:
        os.environ["RAPPORT_WAREHOUSE_URL"] = args.warehouse
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    reset_settings()
    settings = get_settings()
    as_of = datetime.fromisoformat(args.as_of).replace(tzinfo=UTC) if args.as_of else None
    as_of = as_of or datetime.now(UTC)
    con = connect(settings.warehouse_path)
    print(f"warehouse {settings.warehouse_path}, MLflow {settings.tracking_uri}")

    start = time.perf_counter()
    champions = load_champions()
    load_s = time.perf_counter() - start
    print(f"champions {champions.versions} loaded in {load_s:.1f}s")

    had = stored_segments(con)
    run = score_all(con, as_of, champions, chunk_rows=args.chunk_rows, progress=None)
    segments = load_version(raw(con), run.segments_version).model
    n = run.rows
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in run.timings.items())
    full = run.seconds
    print(f"\nfull path (rapport score, models preloaded): {n:,} customers in {full:.1f}s")
    print(f"  {n / full:,.0f} rows/s end to end; {stages}")
    print(f"  + model loading {load_s:.1f}s -> {n / (full + load_s):,.0f} rows/s with loading")
    if not args.keep:
        raw(con).execute(f"DELETE FROM {SCORES} WHERE run_id = ?", [run.run_id])
        raw(con).execute(f"DELETE FROM {RUNS} WHERE run_id = ?", [run.run_id])
        if run.segments_version not in had:
            raw(con).execute(
                f"DELETE FROM {SEGMENT_MODELS} WHERE version = ?", [run.segments_version]
            )

    spec = default_spec()
    features = build(con, as_of, spec)
    features["as_of"] = as_of
    scorer = build_scorer(champions, segments, spec)
    start = time.perf_counter()
    for offset in range(0, n, args.chunk_rows):
        scorer.score_frame(features.iloc[offset : offset + args.chunk_rows])
    scorer_s = time.perf_counter() - start

    start = time.perf_counter()
    X_churn = champions.churn.encode(features)
    X_value = champions.value.encode(features)
    encode_s = time.perf_counter() - start
    boosters = {
        "churn": [(champions.churn.booster_, X_churn)],
        "value": [(champions.value.booster_, X_value)],
    }
    uplift = getattr(champions.nba, "uplift", None)
    if uplift is not None:  # the control's outcome models and each action's DR effects
        X_nba = uplift.encoder_.transform(scorer.enrich(features))  # reads the scores too
        models = [*uplift.arms_[uplift.control].convert, *uplift.arms_[uplift.control].revenue]
        models += [m for pair in uplift.effects_.values() for m in pair]
        boosters["nba uplift"] = [(m, X_nba) for m in models if hasattr(m, "predict")]
    print(f"\nsame {n:,} rows, features prebuilt:")
    print(
        f"  Scorer.score_frame (models, segments, arbitration): {scorer_s:.1f}s, "
        f"{n / scorer_s:,.0f} rows/s"
    )
    print(f"  encoding the two matrices: {encode_s:.1f}s")
    total = 0.0
    for name, models in boosters.items():
        start = time.perf_counter()
        for booster, X in models:
            booster.predict(X, raw_score=True)
        seconds = time.perf_counter() - start
        total += seconds
        trees = sum(booster.num_trees() for booster, _ in models)
        print(
            f"  raw Booster.predict {name:<11} ({len(models):>2} boosters, {trees:>5} trees): "
            f"{seconds:.1f}s, {n / seconds:,.0f} rows/s"
        )
    print(f"  raw Booster.predict, all of them: {total:.1f}s, {n / total:,.0f} rows/s")
    print(
        f"\nfull path / raw predict time: {full / total:.1f}x; "
        f"scorer / raw predict: {scorer_s / total:.2f}x; peak RSS {peak_rss_mb():,.0f} MB"
    )
    assert np.isfinite(total)


if __name__ == "__main__":
    main()
