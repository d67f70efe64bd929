"""How often does ``rapport monitor`` page on a world where nothing changed, and how fast
does it catch the worlds that did? Over seeds.

    uv run python -m bench.monitor_alarms --seeds 1 2 3 4 5 --customers 1500
    uv run python -m bench.monitor_alarms --seeds 1 2 --customers 1500 --scenarios

Each seed simulates the stable world of ``tests/monitor_worlds.py`` (history to
2026-06-01), trains churn and value fast on labels ending before 2025-09-10 and scores and
monitors it monthly (six runs, the last three with a matured 90-day run), exactly as the
monitor's tests do for one seed. It prints per seed the runs with any alert and the
alerting checks among the judged ones, then the false-alarm rates over all seeds: runs
that would page (exit 2) and judged checks at ``alert`` (and at ``warn``), and which
checks fired. ``--scenarios`` also simulates each scenario of ``rapport.scenarios`` from
2025-09-10 with the seed's model and prints the days from the change to its first alert
(``-`` when none came) and the first alert's check. ``--thresholds FILE`` judges with
other thresholds. Never fails on what it measures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from bench.monitoring import _worlds
from models.alerts import load_alerts

SCENARIOS = ("channel", "hazard", "region_hazard", "spend")


def _judged(checks: pd.DataFrame) -> pd.DataFrame:
    return checks[checks["threshold"].notna()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--customers", type=int, default=1500)
    parser.add_argument("--scenarios", action="store_true", help="also time each scenario")
    parser.add_argument("--thresholds", type=Path, help="a thresholds YAML (default: shipped)")
    args = parser.parse_args(argv)
    mw = _worlds()
    thresholds = load_alerts(args.thresholds)
    runs = paging = judged = alerts = warns = 0
    fired: Counter[str] = Counter()
    delays: dict[str, list[str]] = {s: [] for s in SCENARIOS}
    for seed in args.seeds:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="rapport-bench-alarms-") as tmp:
            stable = Path(tmp) / "stable"
            with mw.world_home(stable):
                mw.load_world(stable, args.customers, seed, None)
                mw.train_before_change()
                timeline = mw.monitor_monthly(None, thresholds=thresholds)
            s_paging = s_alerts = s_judged = 0
            for checks in timeline.checks.values():
                j = _judged(checks)
                level = j["level"]
                s_judged += len(j)
                s_alerts += int((level == "alert").sum())
                s_paging += bool((level == "alert").any())
                warns += int((level == "warn").sum())
                for row in j[level == "alert"].itertuples():
                    fired[f"{row.kind}.{row.check} ({row.subject})"] += 1
                    print(
                        f"  seed {seed}: {row.kind}.{row.check} ({row.subject}) {row.value:.4f}: "
                        f"{row.detail}",
                        flush=True,
                    )
            runs += len(timeline.checks)
            paging += s_paging
            judged += s_judged
            alerts += s_alerts
            line = (
                f"seed {seed}: stable world {s_paging}/{len(timeline.checks)} runs alert, "
                f"{s_alerts}/{s_judged} judged checks"
            )
            if args.scenarios:
                for name in SCENARIOS:
                    home = Path(tmp) / name
                    with mw.world_home(home, stable):
                        mw.load_world(home, args.customers, seed, name)
                        found = mw.monitor_monthly(name, thresholds=thresholds)
                    first = min(
                        (d for d, a in found.alerts.items() if len(a) and d >= mw.change_date()),
                        default=None,
                    )
                    if first is None:
                        delays[name].append("-")
                        line += f"; {name} -"
                        continue
                    hit = found.alerts[first].iloc[0]
                    days = (first - mw.change_date()).days
                    delays[name].append(str(days))
                    line += f"; {name} {days}d ({hit['kind']}.{hit['check']})"
        print(f"{line}  [{time.perf_counter() - start:.0f}s]", flush=True)
    print(
        f"false alarms over {len(args.seeds)} seeds x {args.customers:,} customers: "
        f"{paging}/{runs} monitoring runs page ({paging / max(runs, 1):.1%}); "
        f"{alerts}/{judged} judged checks alert ({alerts / max(judged, 1):.2%}), "
        f"{warns} warn ({warns / max(judged, 1):.2%})"
    )
    for name, count in fired.most_common():
        print(f"  fired: {name} x{count}")
    if args.scenarios:
        for name, days in delays.items():
            print(f"{name}: days from the change to the first alert per seed: {', '.join(days)}")


if __name__ == "__main__":
    main()
