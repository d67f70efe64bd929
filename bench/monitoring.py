"""Benchmark ``rapport monitor``'s checks over a million scored customers.

    uv run python -m bench.monitoring                 # 1,000,000 synthetic customers
    uv run python -m bench.monitoring --rows 200000
    uv run python -m bench.monitoring --world 1000000 --keep /tmp/monworld
    RAPPORT_HOME=/path/to/workspace uv run python -m bench.monitoring --full

Without ``--full`` it times the monitor's own work on frames already in memory (what a
run does beyond reading the scores, labels and features): the label-free churn estimate,
realised churn and value metrics by tier and segment, and drift of every feature of the
default spec and both scores against a 20,000-row reference, with the very functions
:func:`training.monitor.run` calls. The rows are synthetic (calibrated churn
probabilities with labels drawn from them, a value band, features drawn per kind); the
cost does not depend on what the numbers mean. ``--full`` runs :func:`training.monitor.run`
on a workspace (its scores, labels and features read from the warehouse) and prints the
total.

``--world N`` is the whole ``rapport monitor`` on a simulated world of ``N`` customers
(``tests/monitor_worlds.py``): churn and value trained fast on a 20,000-customer world of
the same seed (its MLflow store serves the big one, as a model trained on a sample scores
any size), the big world scored three times (a run whose horizon has matured, one partly
matured, and the latest),
then :func:`training.monitor.run` timed stage by stage (its progress messages; MLflow and
the report's modules imported before, as this environment compiles them afresh), with the
plain read of the latest run's scores in the same process as the baseline the total is
divided by (so a loaded machine inflates both). ``--keep DIR`` builds the worlds in DIR
(reused when already there). Never fails on timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.spec import default_spec
from features.tables.scores import RunInfo
from models.alerts import load_alerts
from training import monitor
from training.monitor_checks import SCORES, Checks
from training.monitor_drift import check_drift


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

    current = pd.concat([scored[["customer_id", *SCORES]], features(rows, 0.5)], axis=1)
    reference = features(20_000, 0.0)
    reference["churn_probability"] = rng.beta(1.2, 2.5, len(reference))
    reference["value_mean"] = rng.lognormal(4, 1, len(reference))
    return scored, current, reference


WORLD_SEED = 3


def _worlds() -> Any:
    """``tests/monitor_worlds.py`` (it imports its neighbours as top-level modules, as the
    tests' ``pythonpath`` has them)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import monitor_worlds

    return monitor_worlds


def world(customers: int, root: Path, log_to_mlflow: bool) -> None:
    """Build (or reuse) the worlds under ``root`` and time one ``monitor.run``."""
    from features.tables.scores import latest_run, load_scores
    from features.timeutil import as_utc
    from features.warehouse import connect, raw, table_names
    from rapport.settings import get_settings
    from training.scoring import score_all

    mw = _worlds()
    small, big = root / f"train-{mw.TRAIN_CUSTOMERS}", root / f"world-{customers}"
    # a run whose horizon has matured, one partly matured (a month before: the region
    # peer and complaint checks of its elapsed days) and the latest
    matured, partial, latest = mw.MONITOR_AT[1], mw.MONITOR_AT[3], mw.MONITOR_AT[4]
    if not (small / "ready").exists():
        start = time.perf_counter()
        mw.train_world(small, WORLD_SEED)
        (small / "ready").touch()
        print(
            f"trained churn and value on {mw.TRAIN_CUSTOMERS:,}: {time.perf_counter() - start:.0f}s"
        )
    start = time.perf_counter()
    with mw.world_home(big, small):
        if not (big / "ready").exists():
            mw.load_world(big, customers, WORLD_SEED, None)
            (big / "ready").touch()
        con = connect(get_settings().warehouse_path)
        try:  # each run once (a world kept by an older bench lacks the partly matured one)
            db = raw(con)
            runs = (
                db.execute("SELECT as_of FROM score_runs").fetchall()
                if "score_runs" in table_names(db)
                else []
            )
            scored = {as_utc(t) for (t,) in runs}
            missing = [w for w in (matured, partial, latest) if as_utc(w) not in scored]
            for when in missing:
                score_all(con, when)
        finally:
            con.disconnect()
    if missing:
        print(
            f"world of {customers:,}: scored as of {', '.join(f'{w:%Y-%m-%d}' for w in missing)} "
            f"in {time.perf_counter() - start:.0f}s"
        )
    start = time.perf_counter()
    import mlflow  # noqa: F401  (imported once per process, by any command)

    import training.monitor_report  # noqa: F401

    print(f"imports (not counted): {time.perf_counter() - start:.1f}s")
    with mw.world_home(big, small):
        con = connect(get_settings().warehouse_path)
        try:
            db = raw(con)
            found = db.execute(
                "SELECT run_id FROM score_runs WHERE as_of = ? ORDER BY scored_at DESC LIMIT 1",
                [latest],
            ).fetchone()
            assert found is not None, f"no scoring run as of {latest}"
            (run_id,) = found
            t0 = time.perf_counter()
            rows = len(load_scores(db, latest_run(db, run_id)))
            baseline = time.perf_counter() - t0
            marks: list[tuple[str, float]] = []
            t0 = time.perf_counter()
            result = monitor.run(
                latest,
                con=con,
                log_to_mlflow=log_to_mlflow,
                progress=lambda message: marks.append((message, time.perf_counter())),
            )
            total = time.perf_counter() - t0
        finally:
            con.disconnect()
    print(f"baseline: reading the latest run's {rows:,} scores {baseline:.1f}s")
    ends = [t for _, t in marks[1:]] + [t0 + total]
    print(f"{'(setup)':<62} {marks[0][1] - t0:6.1f}s")
    for (message, at), end in zip(marks, ends, strict=True):
        print(f"{message[:62]:<62} {end - at:6.1f}s")
    print(
        f"monitor.run: {total:.1f}s for {rows:,} customers = {total / baseline:.1f}x the read "
        f"of their scores ({len(result.frame)} checks, {len(result.alerts)} alerts)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--full", action="store_true", help="monitor.run on RAPPORT_HOME")
    parser.add_argument("--world", type=int, help="monitor.run on a simulated world of N")
    parser.add_argument("--keep", type=Path, help="where --world builds (and reuses) its worlds")
    parser.add_argument("--no-mlflow", action="store_true", help="--world: skip MLflow logging")
    args = parser.parse_args()
    if args.world:
        if args.keep:
            world(args.world, args.keep, not args.no_mlflow)
        else:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="rapport-bench-monitor-") as tmp:
                world(args.world, Path(tmp), not args.no_mlflow)
        return
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
    checks = Checks(load_alerts())
    importance = {name: 0.05 for name in spec.names}
    stages = {
        "churn estimate (CBPE)": lambda: monitor._churn_estimate(checks, run, scored, 0.9),
        "churn realised": lambda: monitor._churn_realised(checks, run, scored, 0.9),
        "value realised": lambda: monitor._value_realised(checks, run, scored, 0.6),
        "drift": lambda: check_drift(
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
