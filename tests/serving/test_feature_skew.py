"""Live/batch skew (issue 15): the real service samples the feature vectors it computes to
the outbox, ingest loads them, and the monitor rebuilds them in batch at the same instants.
A clean run agrees on every value; a tampered sample is an alert naming the feature."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from serving_harness import Workspace, environment, serving, workspace_fixture

from features.online.events import OPEN_SUFFIX
from features.outbox_ingest import ingest_outbox
from features.spec import default_spec
from features.tables.feature_samples import FEATURE_SAMPLES, sampled
from features.warehouse import connect, raw
from training import monitor
from training.monitor_drift import check_skew
from training.scoring import score_all

pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


ws = workspace_fixture("skew", customers=1000, seed=13)


def _serve_and_sample(ws: Workspace) -> int:
    """Events then scores for seven customers at share 1.0; returns how many were scored."""
    customers = ws.customers[:7]
    now = datetime.now(UTC)
    orders = [
        {
            "order_id": f"O-skew-{i}",
            "customer_id": c,
            "ordered_at": (now - timedelta(days=1 + i, minutes=i)).isoformat(),
            "amount": 12.5 + i,
            "margin": 3.0,
            "category": "books",
        }
        for i, c in enumerate(customers[:4])
    ]
    env = {"RAPPORT_ONLINE_STORE": "", "RAPPORT_FEATURE_SAMPLE_SHARE": "1.0"}
    with serving(ws.home, env=env) as server:
        admin = {"Authorization": f"Bearer {ws.keys['admin']}"}
        with httpx.Client(base_url=server.url, headers=admin, timeout=30) as http:
            assert http.post("/events", json={"orders": orders}).status_code == 200
            for customer in customers[:4]:  # twice: the second sees the first's decision
                for _ in range(2):
                    reply = http.post("/score", json={"customer_id": customer})
                    assert reply.status_code == 200, reply.text
            batch = {"customers": [{"customer_id": c} for c in customers[4:]]}
            reply = http.post("/score_batch", json=batch)
            assert reply.status_code == 200, reply.text
    assert not list((ws.home / "outbox").glob(f"*/*{OPEN_SUFFIX}")), "a graceful stop seals"
    return 4 * 2 + 3


def _level(checks, subject: str) -> tuple[float, str]:
    row = checks[(checks["check"] == "mismatches") & (checks["subject"] == subject)]
    assert len(row) == 1, checks.to_string()
    return float(row["value"].iloc[0]), str(row["level"].iloc[0])


def test_sampled_live_vectors_agree_with_batch_and_a_skew_alerts(ws: Workspace) -> None:
    scored = _serve_and_sample(ws)
    con = connect(ws.home / "warehouse.duckdb")
    try:
        report = ingest_outbox(con, ws.home / "outbox", datetime.now(UTC))
        assert report.quarantined == 0, report.summary()
        assert report.samples == scored, report.summary()
        assert any(FEATURE_SAMPLES in line for line in report.source_lines())

        checks = check_skew(con)
        samples = checks[checks["check"] == "samples"]["value"].iloc[0]
        assert samples == scored
        assert _level(checks, "all") == (0.0, "ok"), checks.to_string()
        assert (checks["level"] == "ok").all()

        # tamper one sampled value: beyond float tolerance it is an alert naming it
        db = raw(con)
        sample_id, text = db.execute(
            f"SELECT sample_id, features::VARCHAR FROM {FEATURE_SAMPLES} ORDER BY sample_id"
        ).fetchone()
        features = json.loads(text)
        name = next(
            n
            for n in default_spec().numeric
            if isinstance(features.get(n), float) and features[n] != 0
        )
        original = features[name]

        def write(value: float) -> None:
            features[name] = value
            db.execute(
                f"UPDATE {FEATURE_SAMPLES} SET features = ?::JSON WHERE sample_id = ?",
                [json.dumps(features), sample_id],
            )

        write(original * (1 + 1e-9))  # float noise: still agrees
        assert _level(check_skew(con), "all") == (0.0, "ok")
        write(original * 1.01)
        skewed = check_skew(con)
        assert _level(skewed, "all") == (1.0, "alert")
        assert _level(skewed, name) == (1.0, "alert")
        assert f"worst feature {name}" in skewed[skewed["subject"] == "all"]["detail"].iloc[0]
        assert set(skewed[skewed["level"] == "alert"]["subject"]) == {"all", name}

        # ingesting again loads nothing twice
        assert ingest_outbox(con, ws.home / "outbox", datetime.now(UTC)).samples == 0

        # `rapport monitor` itself: the skew alert is among its alerts, in the report too
        with environment(RAPPORT_HOME=str(ws.home), MLFLOW_TRACKING_URI=None):
            score_all(con)
            result = monitor.run(con=con, log_to_mlflow=False)
        alerts = result.alerts[result.alerts["kind"] == "skew"]
        assert set(alerts["subject"]) == {"all", name}, result.summary()
        assert "skew      mismatches" in result.summary()
        assert result.report is not None and name in result.report.read_text()
    finally:
        con.disconnect()


def test_sampling_is_a_deterministic_share_of_decision_ids() -> None:
    ids = [f"d-{i:08x}" for i in range(20_000)]
    picked = [i for i in ids if sampled(i, 0.01)]
    assert 0.007 < len(picked) / len(ids) < 0.013
    assert picked == [i for i in ids if sampled(i, 0.01)]  # same ids, same answer
    assert not any(sampled(i, 0.0) for i in ids[:100])
    assert all(sampled(i, 1.0) for i in ids[:100])
    assert set(picked) <= {i for i in ids if sampled(i, 0.05)}  # nested shares
