"""The numba TreeSHAP port (:mod:`models.treeshap`) against LightGBM's, on a churn model.

    OMP_NUM_THREADS=1 uv run python -m bench.treeshap --home DIR   # a copy of a demo workspace

Encodes ``--customers`` customers' live features as of now, then counts the rows whose
contributions differ in any bit from ``booster.predict(X, num_threads=1,
pred_contrib=True)``: those rows, and rows made from them holding each numerical split's
threshold (and its neighbours) or NaN, 0.0, -0.0, +-inf, +-1e-36. Then times one-row
calls, alternating blocks of 500 rows:
:meth:`FastPredictor.predict_row` with ``PREDICT_CONTRIB`` through LightGBM's C API
(the live reasons' call before the port) and :meth:`TreeShap.contributions_into` (no copy,
no checks). Prints microseconds per row (median of the blocks) and the 1-minute load
average. Never fails on timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.score_steps import worker_scorer
from tests.serving_harness import sample_customers


def _rows(X: np.ndarray, thresholds: list[tuple[int, float]], seed: int = 1) -> np.ndarray:
    """Rows of ``X`` with one split's threshold (or a neighbour) or special values."""
    rng = np.random.default_rng(seed)
    rows = []
    for feature, threshold in thresholds:
        for value in (threshold, np.nextafter(threshold, np.inf), np.nextafter(threshold, -np.inf)):
            row = X[rng.integers(len(X))].copy()
            row[feature] = value
            rows.append(row)
    special = np.array([np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-36, -1e-36])
    for _ in range(2000):
        row = X[rng.integers(len(X))].copy()
        mask = rng.random(row.size) < 0.3
        row[mask] = rng.choice(special, int(mask.sum()))
        rows.append(row)
    return np.vstack(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, required=True, help="Workspace (not modified).")
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--blocks", type=int, default=15, help="Timed blocks of 500 rows each.")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    home = args.home.expanduser().absolute()

    from features.online.record import evaluate
    from models.fastpredict import PREDICT_CONTRIB, FastPredictor

    customers = sample_customers(home, args.customers)
    spec, store, live = worker_scorer(home)
    scorer = live.scorer
    assert scorer is not None, "the workspace's champions cannot score"
    booster = scorer.churn.booster_
    now = datetime.now(UTC)
    records = [store.get(c) for c in customers]
    features = [evaluate(r, now, spec) for r in records if r is not None]
    X = np.ascontiguousarray(scorer.churn.encode(features), dtype=np.float64)

    started = time.perf_counter()
    from models.treeshap import TreeShap

    imported = time.perf_counter()
    table = TreeShap(booster)
    built = time.perf_counter()
    table.contributions(X[0])
    first = time.perf_counter()
    print(
        f"{booster.num_trees()} trees, {booster.num_feature()} features, depth "
        f"{table.trees.max_depth}; table {table._terms.nbytes / 1e6:.2f} MB\n"
        f"import models.treeshap (numba) {imported - started:.2f} s; TreeShap() "
        f"{built - imported:.2f} s; first row {first - built:.3f} s (JIT: compiled or read "
        "from numba's cache)"
    )

    t = table.trees
    numerical = [
        (int(f), float(v))
        for f, v, r in zip(t.split_feature, t.threshold, t.decision_type, strict=True)
        if not r & 1
    ]
    for name, rows in (("customers", X), ("thresholds + special", _rows(X, numerical))):
        expected = np.asarray(booster.predict(rows, num_threads=1, pred_contrib=True))
        got = np.vstack([table.contributions(row) for row in rows])
        differ = [i for i in range(len(rows)) if got[i].tobytes() != expected[i].tobytes()]
        worst = float(np.max(np.abs(got[differ] - expected[differ]))) if differ else 0.0
        print(f"{name} ({len(rows)} rows): {len(differ)} differ (max {worst:g})")

    fast = FastPredictor(booster, treeshap=False)  # LightGBM's C API, as before the port
    block = X[:500]
    out = np.empty_like(table.out)

    def timed(call: Callable[[np.ndarray], object]) -> float:
        start = time.perf_counter_ns()
        for row in block:
            call(row)
        return (time.perf_counter_ns() - start) / len(block) / 1e3

    calls: dict[str, Callable[[np.ndarray], object]] = {
        "FastPredictor.predict_row(PREDICT_CONTRIB)": lambda r: fast.predict_row(
            r, PREDICT_CONTRIB
        ),
        "TreeShap table contributions_into": lambda r: table.contributions_into(r, out),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.blocks):
        for name, call in calls.items():
            times[name].append(timed(call))
    for name, values in times.items():
        print(f"{name}: {statistics.median(values):.1f} us/row")
    print(f"load average (1 min) {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
