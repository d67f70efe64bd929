"""Power of ``rapport monitor``'s region peer checks (``churn.active_vs_peers``,
``churn.complaints_vs_peers``): is a dropout hazard that changes in one region caught
within one scoring period, and from what size of world?

    uv run python -m bench.monitor_power --seeds 1 2 3 --customers 40000 --train-customers 40000
    uv run python -m bench.monitor_power --seeds 3 --customers 300000 --stable-runs 0

Per seed: churn and value trained on a stable world of ``--train-customers`` before the
change (``tests/monitor_worlds.py``; when it has ``--customers`` it is the stable world
itself, as in the tests; a smaller one serves a larger world as a sample would, but then
the checks against the holdout read another world's customers and page), and a world
whose ``--region`` (north, a quarter of the customers) has its dropout hazard multiplied
by ``--hazard`` from 2025-09-10, of ``--customers`` and the same seed (identical before
the change). Both are scored on 2025-09-06 (four days before the change) and 2025-10-06
and monitored as of 2025-10-06: 26 days after the change, the 09-06 run has 30 elapsed
days (its partly matured checks). The stable world is also scored and monitored on the
next ``--stable-runs`` months (false alarms). ``--history K`` also scores and monitors
both worlds monthly for K months before 2025-09-06, so the 10-06 peer checks judge each
region against its own gap in up to ``peer_history`` earlier runs (the difference in
differences) instead of the peers of one run. Prints per world both peer checks of every
region and every alert of any check; per seed the hit region's effect against its peers
(buyers, and for comparison order counts against the prediction and against the
customer's own year; complaints) with z and per-customer variance; then, from their
means over seeds, the active customers a region needs for 80% power at the shipped
threshold (Holm 1% over the regions, :func:`models.monitoring.customers_for_power`), the
power predicted at this size and the seeds that detected it. Never fails on what it
measures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from bench.monitoring import _worlds
from models import monitoring as stats

CHECK = "active_vs_peers"


def _peer_rows(checks: pd.DataFrame, check: str = CHECK) -> pd.DataFrame:
    rows = checks[(checks["check"] == check)].copy()
    rows["region"] = rows["subject"].str.removeprefix("region ")
    return rows.set_index("region")


def _measure(home: Path, when: datetime, region: str) -> dict[str, float]:
    """The hit region's figures recomputed from the warehouse as the monitor does
    (``peer_shortfall`` over the partly matured run's elapsed days)."""
    from features.tables import monitoring as tables
    from features.tables.scores import load_scores
    from features.warehouse import connect, raw
    from models.alerts import load_alerts
    from rapport.settings import get_settings
    from training import monitor, monitor_partial
    from training.datasets import labels

    con = connect(get_settings().warehouse_path, read_only=True)
    try:
        db = raw(con)
        runs = monitor._scoring_runs(db, when)
        part = [r for r in runs if (when - r.as_of).days >= 28][-1]
        days = (when - part.as_of).days
        scored = load_scores(db, part, monitor.SCORE_COLUMNS)
        now = monitor_partial._elapsed(con, labels(con, [part.as_of], days), part.as_of, scored)
        year = part.as_of - timedelta(days=365)
        past = labels(con, [year], 365)[["customer_id", "orders_in_horizon"]]
        complaints = monitor_partial._complaints(con, part.as_of, days)
    finally:
        con.disconnect()
    past = past.rename(columns={"orders_in_horizon": "past"})
    now = now.merge(past, on="customer_id", how="left")
    now["past_rate"] = now["past"].fillna(0) * days / 365
    out: dict[str, float] = {"world_active": float(len(now))}
    # the shipped statistic (who bought) and, for comparison, order counts against the
    # prediction and against the customer's own orders of the year before
    variants = (
        ("bought", "expected_buyer", ""),
        ("orders_in_horizon", "expected_buyer", "orders_"),
        ("orders_in_horizon", "past_rate", "own_"),
    )
    for done, predicted, prefix in variants:
        found = stats.peer_shortfall(now[done], now[predicted], now["region"])
        row = found.set_index("group").loc[region]
        out |= {
            f"{prefix}rows": float(row["rows"]),
            f"{prefix}shortfall": float(row["shortfall"]),
            f"{prefix}variance": float(row["variance"] * row["rows"] / row["expected"] ** 2),
            f"{prefix}z": float(row["z"]),
        }
    # the complaints check: an excess, per customer, within strata of churn risk
    now = now.merge(complaints, on="customer_id", how="left").fillna({"complaints": 0.0})
    found = stats.peer_shortfall(
        -now["complaints"], np.ones(len(now)), now["region"], by=now["churn_probability"]
    )
    row = found.set_index("group").loc[region]
    out |= {
        "complaints_excess": float(row["observed"] / row["expected"] - 1),
        "complaints_variance": float(row["variance"] * row["rows"] / row["expected"] ** 2),
        "complaints_z": float(row["z"]),
        "regions": float(found["group"].nunique()),
    }
    # against the region's own earlier gaps, as the monitor judged it (monitor_peers)
    found[["observed", "expected"]] = found[["observed", "expected"]].abs()
    con = connect(get_settings().warehouse_path, read_only=True)
    try:
        past = tables.load_peer_history(
            raw(con), "complaints_vs_peers", part.as_of, load_alerts().peer_history
        )
    finally:
        con.disconnect()
    did = stats.gap_vs_past(found, past, excess=True).set_index("group").loc[region]
    out |= {
        "did_runs": float(did["past_runs"]),
        "did_z": float(did["z"]),
        # the variance the history adds, as a share of this run's own
        "did_extra": float(did["past_sd"] ** 2 / did["gap_sd"] ** 2) if did["past_runs"] else 0.0,
    }
    return out


def mw_train_customers() -> int:
    return int(_worlds().TRAIN_CUSTOMERS)


def main(argv: list[str] | None = None) -> None:
    from rapport.scenarios import Scenario

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--hazard", type=float, default=2.0)
    parser.add_argument("--region", default="north")
    parser.add_argument("--stable-runs", type=int, default=1, help="later stable months")
    parser.add_argument("--keep", type=Path, help="build the worlds here (reused)")
    parser.add_argument("--train-customers", type=int, default=mw_train_customers())
    parser.add_argument("--history", type=int, default=0, help="months monitored before 2025-09-06")
    args = parser.parse_args(argv)
    mw = _worlds()
    first = mw.MONITOR_AT[1]  # 2025-10-06, 26 days after the change
    earlier = [
        (pd.Timestamp(mw.MONITOR_AT[0]) - pd.DateOffset(months=k)).to_pydatetime()
        for k in range(args.history, 0, -1)
    ]
    stable_dates = [*earlier, mw.MONITOR_AT[0], *mw.MONITOR_AT[1 : 2 + args.stable_runs]]
    scenario = Scenario("bench", mw.change_date(), hazard_factor=args.hazard, region=args.region)
    found: list[dict[str, float]] = []
    stable_runs = stable_paging = stable_peer = 0
    detected = {"active_vs_peers": 0, "complaints_vs_peers": 0}
    for seed in args.seeds:
        start = time.perf_counter()
        tmp = tempfile.TemporaryDirectory(prefix="rapport-bench-power-")
        root = args.keep or Path(tmp.name)
        train = root / f"train-{seed}-{args.train_customers}"
        if not (train / "ready").exists():
            mw.train_world(train, seed, args.train_customers)
            (train / "ready").touch()
        worlds = {
            "stable": (None, stable_dates),
            f"hazard x{args.hazard:g} {args.region}": (scenario, stable_dates[: 2 + args.history]),
        }
        for name, (chosen, dates) in worlds.items():
            home = root / f"{name.replace(' ', '-')}-{seed}-{args.customers}"
            if chosen is None and args.customers == args.train_customers:
                home = train  # the stable world is the one the champions were trained on
            with mw.world_home(home, train):
                if not (home / "ready").exists():
                    mw.load_world(home, args.customers, seed, chosen)
                    (home / "ready").touch()
                timeline = mw.monitor_monthly(name, dates, score_only=1)
                measured = _measure(home, first, args.region)
            for when, checks in sorted(timeline.checks.items()):
                peers = _peer_rows(checks)
                alerts = checks[checks["level"] == "alert"]
                line = ", ".join(
                    f"{r}: {peers.loc[r, 'value']:.2f} {peers.loc[r, 'level']}" for r in peers.index
                )
                print(f"seed {seed} {name} {when:%Y-%m-%d}: -log10 Holm p per region {line}")
                complaints = _peer_rows(checks, "complaints_vs_peers")
                line = ", ".join(
                    f"{r}: {complaints.loc[r, 'value']:.2f} {complaints.loc[r, 'level']}"
                    for r in complaints.index
                )
                print(f"    complaints: {line}")
                for a in alerts.itertuples():
                    print(f"    alert {a.kind}.{a.check} ({a.subject}) {a.value:.3f}: {a.detail}")
                if chosen is None:
                    stable_runs += 1
                    stable_paging += bool(len(alerts))
                    stable_peer += int((peers["level"] == "alert").sum())
                    stable_peer += int(
                        (_peer_rows(checks, "complaints_vs_peers")["level"] == "alert").sum()
                    )
            hit = timeline.checks[first]
            hit = hit[hit["level"] == "alert"]
            print(
                f"seed {seed} {name}: {args.region} {measured['rows']:,.0f} active of "
                f"{measured['world_active']:,.0f}, shortfall vs peers "
                f"{measured['shortfall']:+.2%}, z {measured['z']:.2f}, "
                f"per-customer variance {measured['variance']:.3f} (orders instead: "
                f"{measured['orders_shortfall']:+.2%}, z {measured['orders_z']:.2f}, "
                f"variance {measured['orders_variance']:.3f}; orders against their own "
                f"year: {measured['own_shortfall']:+.2%}, z {measured['own_z']:.2f}, "
                f"variance {measured['own_variance']:.3f}); complaints "
                f"{measured['complaints_excess']:+.1%} vs peers, z "
                f"{measured['complaints_z']:.2f}, per-customer variance "
                f"{measured['complaints_variance']:.2f}; against its own "
                f"{measured['did_runs']:.0f} earlier gap(s): z {measured['did_z']:.2f}, variance x"
                f"{1 + measured['did_extra']:.2f}",
                flush=True,
            )
            if chosen is not None:
                found.append(measured)
                for check in detected:
                    one = hit[hit["check"] == check]
                    detected[check] += set(one["subject"]) == {f"region {args.region}"}
        tmp.cleanup()
        print(f"seed {seed}: {time.perf_counter() - start:.0f}s", flush=True)
    rows = float(np.mean([f["rows"] for f in found]))
    share = rows / float(np.mean([f["world_active"] for f in found]))
    regions = int(found[0]["regions"])
    print(
        f"hazard x{args.hazard:g} in {args.region} over {len(args.seeds)} seeds x "
        f"{args.customers:,} customers ({rows:,.0f} active in {args.region}, {share:.0%} of "
        f"the active), 2025-10-06 (26 days after the change):"
    )
    for check, key in (("active_vs_peers", "shortfall"), ("complaints_vs_peers", "excess")):
        prefix = "" if key == "shortfall" else "complaints_"
        effect = float(np.mean([f[prefix + key] for f in found]))
        variance = float(np.mean([f[prefix + "variance"] for f in found]))
        line = (
            f"  {check}: {key} {effect:+.2%} (mean over seeds), per-customer variance "
            f"{variance:.3f}; detected (alert on {args.region} alone) {detected[check]}/"
            f"{len(found)}"
        )
        if effect > 0:  # the direction the check tests
            here, need, world = _power(effect, variance, rows, regions, args.customers)
            line += (
                f"; predicted power here {here:.0%}; 80% power at Holm 1% over {regions} "
                f"regions from {need:,.0f} active in the region (~{world:,.0f} customers in a "
                "world like these)"
            )
            extra = float(np.mean([f["did_extra"] for f in found]))
            if check == "complaints_vs_peers" and extra > 0:
                runs = float(np.mean([f["did_runs"] for f in found]))
                did = variance * (1 + extra)
                here, need, world = _power(effect, did, rows, regions, args.customers)
                line += (
                    f"; against the region's own past ({runs:.1f} earlier runs, variance "
                    f"x{1 + extra:.2f}): predicted power here {here:.0%}, 80% from "
                    f"{need:,.0f} active (~{world:,.0f} customers)"
                )
        print(line)
    print(
        f"stable world: {stable_paging}/{stable_runs} monitoring runs page (any check); "
        f"{stable_peer} region peer alerts (active_vs_peers, complaints_vs_peers)"
    )


def _power(
    effect: float, variance: float, rows: float, regions: int, customers: int
) -> tuple[float, float, float]:
    """The peer check's predicted power with ``rows`` active customers in the region, the
    active customers 80% power needs (Holm 1% over ``regions``), and the world's customers
    that many active ones take (in proportion to these worlds of ``customers``)."""
    need = stats.customers_for_power(effect, variance, regions, alpha=0.01, power=0.8)
    here = stats.peer_power(effect, variance, rows, regions, alpha=0.01)
    return here, need, need / rows * customers


if __name__ == "__main__":
    main()
