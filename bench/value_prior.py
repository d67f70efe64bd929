"""The value model against BG/NBD + Gamma-Gamma on transaction-only worlds, over seeds.

    uv run python -m bench.value_prior --seeds 1 2 3 4 5 --customers 3000

Each seed simulates a world without touchpoints and campaigns and with heavy-tailed spend
(``tests/value_worlds.py``), trains the value model (which chooses between the boosted
model, the prior and a blend on the validation cutoff) and scores it and BG/NBD + GG
against the true expected spend on the holdout. Prints one line per seed and the mean and
standard deviation of the differences (model - BG/NBD); never asserts.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from tests.value_worlds import METRICS, transaction_world


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--customers", type=int, default=3000)
    args = parser.parse_args(argv)
    diffs: dict[str, list[float]] = {m: [] for m in METRICS}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="rapport-bench-value-") as tmp:
            result = transaction_world(Path(tmp), seed, args.customers)
        cells = "  ".join(f"{m} {result.model[m]:.4f} vs {result.btyd[m]:.4f}" for m in METRICS)
        print(f"seed {seed}: {cells}  | {result.choice.reason()}", flush=True)
        for m in METRICS:
            diffs[m].append(result.model[m] - result.btyd[m])
    for m in METRICS:
        d = np.asarray(diffs[m])
        sd = d.std(ddof=1) if len(d) > 1 else float("nan")
        print(f"model - BG/NBD {m}: mean {d.mean():+.4f}, sd over seeds {sd:.4f}")


if __name__ == "__main__":
    main()
