"""Benchmark ``rapport monitor``'s checks over a million scored customers.

    uv run python -m bench.monitoring                 # 1,000,000 synthetic customers
    uv run python -m bench.monitoring --rows 200000
    RAPPORT_HOME=/path/to/workspace uv run python -m bench.monitoring --full

Without ``--full`` it times the monitor's own work on frames already in memory (what a
run does beyond reading the scores, labels and features): the label-free churn estimate,
realised churn and value metrics by tier and segment, and drift of every feature of the
default spec and both scores against a 20,000-row reference, with the very functions
:func:`training.monitor.run` calls. The rows are synthetic (calibrated churn
probabilities with labels drawn from them, a value band, features drawn per kind); the
cost does not depend on what the numbers mean. ``--full`` runs :func:`training.monitor.run`
on a workspace (its scores, labels and features read from the warehouse) and prints the
total. Never fails on timing.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from features.spec import default_spec
from features.tables.scores import RunInfo
from models.alerts import load_alerts
from training import monitor


def synthetic(rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(scores with labels, features of the run, the reference) for ``rows`` customers."""
    rng = np.random.default_rng(seed)
    spec = default_spec()
    p = rng.beta(1.2, 2.5, rows)
    mean = rng.lognormal(4, 1, rows)
    scored = pd.DataFrame(
        {
            "customer_id": np.arange(rows).astype(str),
            "churn_probability": p,
            "churned": rng.random(rows) < p,
            "active": True,
            "value_mean": mean,
            "value_p10": mean * 0.3,
            "value_p50": mean * 0.9,
            "value_p90": mean * 2.0,
            "spend": mean * rng.gamma(2, 0.5, rows),
            "abc_tier": rng.choice(["A", "B", "C"], rows, p=[0.2, 0.3, 0.5]),
            "rfm_segment": rng.choice([f"s{i}" for i in range(11)], rows),
        }
    )

    def features(n: int, shift: float) -> pd.DataFrame:
        cols: dict[str, object] = {}
        for name in spec.names:
            if name in spec.categorical:
                cols[name] = pd.Series(rng.choice(["a", "b", "c", "d", "e"], n)).replace("e", None)
            else:
                cols[name] = rng.gamma(1.5, 10 + shift, n)
        return pd.DataFrame(cols)

    current = pd.concat([scored[["customer_id", *monitor.SCORES]], features(rows, 0.5)], axis=1)
    reference = features(20_000, 0.0)
    reference["churn_probability"] = rng.beta(1.2, 2.5, len(reference))
    reference["value_mean"] = rng.lognormal(4, 1, len(reference))
    return scored, current, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--full", action="store_true", help="monitor.run on RAPPORT_HOME")
    args = parser.parse_args()
    if args.full:
        start = time.perf_counter()
        result = monitor.run(log_to_mlflow=False)
        print(result.summary().splitlines()[-2])
        print(f"full monitor.run: {time.perf_counter() - start:.1f}s")
        return
    start = time.perf_counter()
    scored, current, reference = synthetic(args.rows)
    print(
        f"synthetic {args.rows:,} customers x {current.shape[1]} columns: "
        f"{time.perf_counter() - start:.1f}s (not counted)"
    )
    spec = default_spec()
    run = RunInfo(
        "bench",
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime.now(UTC),
        args.rows,
        {},
        spec.version,
        {},
    )
    checks = monitor._Checks(load_alerts())
    importance = {name: 0.05 for name in spec.names}
    stages = {
        "churn estimate (CBPE)": lambda: monitor._churn_estimate(checks, run, scored, 0.9),
        "churn realised": lambda: monitor._churn_realised(checks, run, scored, 0.9),
        "value realised": lambda: monitor._value_realised(checks, run, scored, 0.6),
        "drift": lambda: monitor._drift(
            checks, run, current, reference, set(spec.categorical), importance
        ),
    }
    total = 0.0
    for name, stage in stages.items():
        t0 = time.perf_counter()
        stage()
        took = time.perf_counter() - t0
        total += took
        print(f"{name:<24} {took:6.1f}s")
    print(
        f"checks beyond reading: {total:.1f}s for {args.rows:,} customers "
        f"({len(checks.rows)} checks)"
    )


if __name__ == "__main__":
    main()
