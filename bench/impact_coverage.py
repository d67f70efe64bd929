"""Does ``rapport impact``'s 95% interval contain the simulator's true incremental value?

    uv run python -m bench.impact_coverage [--customers 4000] [--seeds 8] [--share 0.1]

One demo world (``rapport.demo_data``, ground truth ingested). Per seed, on a fresh copy of
its warehouse: every demo customer gets one decision after the demo's end -- control by
the salted hash (a new salt per seed) gets ``no_action``, the others a random catalog
action (group ``treated``, the mixture propensity) -- loaded through ``rapport ingest``;
``rapport simulate`` plays the customers' responses (draws seeded per run) and ``rapport
ingest`` loads them; ``rapport impact`` measures. The truth is the simulator's true
incremental revenue of the period (:func:`rapport.truth.load_simulated_truth`), turned
into the value per treated customer ``impact`` estimates: ``true incremental revenue x
margin rate / treated customers - mean action cost``.

Prints per seed the estimate, interval and truth, then the coverage, the mean error and
the interval width (Welch against CUPED). Never fails: it reports.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from features.control import ControlGroup
from features.ingest import discover_files, ingest
from features.warehouse import connect
from models.catalog import default_catalog
from rapport.demo_data import RESPONSE_WINDOW_DAYS, generate, write
from rapport.simulate import simulate
from rapport.truth import ingest_demo, load_simulated_truth, load_truth_actions
from training import impact
from training.nba_evaluation import default_margin_rate

END = datetime(2025, 1, 1, tzinfo=UTC)
DECIDED = END + timedelta(days=1)
AS_OF = DECIDED + timedelta(days=RESPONSE_WINDOW_DAYS + 2)  # every window closed


def build_world(folder: Path, customers: int) -> tuple[Path, list[str], list[str]]:
    """The demo warehouse; returns its path, the customers the truth knows, the actions."""
    data = generate(customers, seed=4, end=END)
    files = write(data, folder / "demo")["customers"].parent
    path = folder / "world.duckdb"
    con = connect(path)
    try:
        ingest_demo(con, files, now=END)
        truth = load_truth_actions(con)
        assert truth is not None
    finally:
        con.disconnect()
    known = sorted(set(truth["customer_id"].astype(str)))
    catalog = default_catalog()
    actions = sorted(set(truth["action"]) & set(catalog.ids) - {"no_action"})
    return path, known, actions


def one_seed(
    world: Path, customers: list[str], actions: list[str], seed: int, share: float
) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix=f"impact-cov-{seed}-"))
    shutil.copy(world, home / "warehouse.duckdb")
    catalog = default_catalog()
    channels = {a.id: a.channel for a in catalog.actions}
    costs = {a.id: a.cost for a in catalog.actions}
    control = ControlGroup(share, f"bench-{seed}")
    rng = np.random.default_rng(seed)
    held = control.mask(customers)
    chosen = np.where(held, "no_action", rng.choice(actions, len(customers)))
    log = pd.DataFrame(
        {
            "decision_id": [f"bc-{seed}-{i}" for i in range(len(customers))],
            "customer_id": customers,
            "decided_at": DECIDED.isoformat(),
            "action": chosen,
            "channel": [channels[a] for a in chosen],
            "propensity": np.where(held, share, (1 - share) / len(actions)),
            "group": np.where(held, "control", "treated"),
        }
    )
    (home / "log").mkdir()
    log.to_csv(home / "log" / "campaign_log.csv", index=False)
    con = connect(home / "warehouse.duckdb")
    try:
        ingest(con, {"campaign_log": home / "log" / "campaign_log.csv"}, now=DECIDED)
        played = simulate(con, home, home / "outbox", RESPONSE_WINDOW_DAYS + 2, AS_OF, seed)
        ingest(con, discover_files(played.folder), now=AS_OF)
        result = impact.measure(con, since=DECIDED, now=AS_OF).record(con, log_to_mlflow=False)
    finally:
        con.disconnect()
    truth = load_simulated_truth(home)
    assert truth is not None
    treated = log[log["group"] == "treated"]
    margin = default_margin_rate(catalog)
    true_value = truth["true_incremental_revenue"] * margin / len(treated) - float(
        treated["action"].map(costs).mean()
    )
    row = result.table[result.table["period"] == "all"].iloc[0]
    shutil.rmtree(home, ignore_errors=True)
    return {
        "seed": seed,
        "truth": true_value,
        "estimate": float(row["incremental_value"]),
        "lo": float(row["incremental_value_lo"]),
        "hi": float(row["incremental_value_hi"]),
        "method": row["method"],
        "variance_reduction": float(row["variance_reduction"]),
        "treated": int(row["treated_customers"]),
        "control": int(row["control_customers"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--share", type=float, default=0.1)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="impact-cov-world-"))
    started = time.perf_counter()
    world, customers, actions = build_world(folder, args.customers)
    print(
        f"world: {len(customers):,} customers, actions {actions} "
        f"({time.perf_counter() - started:.0f}s)"
    )
    rows = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        r = one_seed(world, customers, actions, seed, args.share)
        rows.append(r)
        inside = r["lo"] <= r["truth"] <= r["hi"]
        print(
            f"seed {seed}: treated {r['treated']:,} control {r['control']:,}: estimate "
            f"{r['estimate']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] ({r['method']}, variance "
            f"-{r['variance_reduction']:.0%}), truth {r['truth']:.3f} "
            f"{'inside' if inside else 'OUTSIDE'} ({time.perf_counter() - t0:.0f}s)"
        )
    frame = pd.DataFrame(rows)
    covered = ((frame["lo"] <= frame["truth"]) & (frame["truth"] <= frame["hi"])).mean()
    error = (frame["estimate"] - frame["truth"]).mean()
    print(
        f"coverage of the 95% interval: {covered:.0%} over {len(frame)} seeds; mean error "
        f"{error:+.3f} (mean truth {frame['truth'].mean():.3f}); mean width "
        f"{(frame['hi'] - frame['lo']).mean():.3f}"
    )
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
