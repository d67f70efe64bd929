"""CPU a worker's reload thread spends per champion swap (it holds the interpreter lock
that the worker's requests wait for), and per check that finds nothing new.

    uv run python -m bench.reload_cpu --home DIR     # a workspace with churn v1 and v2

In one process, as the service's watcher does: :meth:`serving.reload.Reloader.check`
after a new champions bundle (churn v1 and v2 alternately, loaded beforehand, so only
the service's side is timed), with ``time.thread_time`` around it. Prints the medians
(the first two swaps, cold, left out). ``bench.swap`` prepares such a workspace
(``--keep DIR``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from tests.serving_harness import environment


def measure(home: Path, swaps: int) -> tuple[list[float], list[float]]:
    """(CPU seconds per swap, per check without a change)."""
    from features.online.store import open_store
    from features.spec import default_spec
    from models import registry
    from models.bundle import bundle_champions, load_for_serving
    from rapport.settings import get_settings
    from serving.reload import Reloader

    with environment(RAPPORT_HOME=str(home), RAPPORT_ONLINE_STORE=None, MLFLOW_TRACKING_URI=None):
        settings = get_settings()
        reloader = Reloader(settings, default_spec(), open_store(settings.online_store_url))
        live = reloader.start()
        ready = {}
        for number in ("1", "2"):
            champions = load_for_serving(settings)
            champions.models["churn"], _ = registry.load_model("churn", version=number)
            champions.versions["churn"] = number
            ready[number] = champions
        swap, idle = [], []
        version = "2"
        for _ in range(swaps + 2):
            started = time.thread_time()
            reloader.check(live)
            idle.append(time.thread_time() - started)
            bundle_champions(ready[version], settings)
            started = time.thread_time()
            live = reloader.check(live) or live
            swap.append(time.thread_time() - started)
            version = "1" if version == "2" else "2"
        bundle_champions(ready["1"], settings)  # leave churn v1 bundled
    return swap[2:], idle[2:]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, required=True, help="Workspace with churn v1, v2.")
    parser.add_argument("--swaps", type=int, default=10)
    args = parser.parse_args(argv)
    swap, idle = measure(args.home.expanduser().absolute(), args.swaps)
    print(
        f"CPU per swap: median {1000 * statistics.median(swap):.1f} ms "
        f"(min {1000 * min(swap):.1f}, max {1000 * max(swap):.1f}) over {len(swap)} swaps; "
        f"per check finding nothing new: median {1000 * statistics.median(idle):.1f} ms"
    )


if __name__ == "__main__":
    main()
