"""What sampling live feature vectors for the skew check costs a request, in process.

    uv run python -m bench.feature_samples --customers 300 --rounds 5

Per request the service now draws a decision id, hashes it (:func:`sampled`) and, when
sampled, queues the vector (:meth:`DecisionBuffer.sample`); encoding and the outbox write
happen behind the answer, in the decision group writer. Printed: the request-side cost per
request at shares 0, 0.01 and 1, against the live feature evaluation of the same request
(:func:`features.online.record.evaluate`, a part of a score only), and the writer-side
cost per sample (encode + the group's outbox append, fsync included).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from features.online.events import DecisionBuffer, Outbox, new_decision_id
from features.online.record import evaluate, records_from_frames
from features.online.store import open_store
from features.spec import default_spec
from features.tables.feature_samples import sample_row, sampled
from rapport.demo_data import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    spec = default_spec()
    data = generate(args.customers, seed=3)
    records = list(
        records_from_frames(
            data.customers,
            {
                "orders": data.orders,
                "interactions": data.interactions,
                "campaign_log": data.campaign_log,
            },
            spec,
        ).values()
    )
    now = datetime.now(UTC)
    version = spec.version  # a hash of the whole spec: the service holds it once too
    n = len(records) * args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'online.sqlite'}")
        buffer = DecisionBuffer(store, Outbox(Path(tmp) / "outbox"), spec)
        vectors = [evaluate(r, now, spec) for r in records]

        start = time.perf_counter()
        for _ in range(args.rounds):
            for record in records:
                evaluate(record, now, spec)
        evaluate_us = (time.perf_counter() - start) / n * 1e6

        start = time.perf_counter()
        for _ in range(args.rounds):
            for _vector in vectors:
                new_decision_id()
        id_us = (time.perf_counter() - start) / n * 1e6

        print(f"{n:,} requests; live feature evaluation {evaluate_us:.1f} us per request")
        for share in (0.0, 0.01, 1.0):
            buffer._samples.clear()
            start = time.perf_counter()
            for _ in range(args.rounds):
                for vector in vectors:
                    decision_id = new_decision_id()
                    if sampled(decision_id, share):
                        buffer.sample(
                            sample_row(decision_id, vector["customer_id"], now, version, vector)
                        )
            cost = (time.perf_counter() - start) / n * 1e6 - id_us
            print(
                f"share {share:<5}: +{cost:6.2f} us per request on the request path "
                f"({100 * cost / evaluate_us:.2f}% of the feature evaluation)"
            )
        queued = len(buffer._samples)
        start = time.perf_counter()
        buffer.flush()
        write_us = (time.perf_counter() - start) / queued * 1e6
        print(f"writer (behind the answer): {write_us:.1f} us per sample, {queued:,} in one group")
        store.close()


if __name__ == "__main__":
    main()
