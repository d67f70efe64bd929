"""``rapport demo``'s simulated period: the policy's batch decisions (control group held
out) are played by the simulator, ingested and measured by ``rapport impact``; the demo
prints the headline beside the simulator's true value. Built like the demo's batch part on
a small world (churn/value fast, NBA with few bootstraps); its setup trains every model,
~100 s on a loaded 2-core machine, so it is marked slow (`uv run pytest -m slow`)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sample_data import FAST_PARAMS
from serving_harness import environment

from features.warehouse import connect
from rapport.demo import simulated_period
from rapport.demo_data import generate, write
from rapport.settings import get_settings, reset_settings
from rapport.truth import ingest_demo

END = datetime(2026, 6, 1, tzinfo=UTC)
HEADLINE = re.compile(
    r"headline: incremental value per treated customer (-?[\d,.]+) \(95% interval "
    r"(-?[\d,.]+) \.\. (-?[\d,.]+), (\w+); ([\d,]+) treated vs ([\d,]+) control customers\)\n"
    r"  the simulator's true incremental value per treated customer: (-?[\d,.]+) "
    r"\((inside|OUTSIDE) the interval\)"
)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo home after the batch part: truth loaded, champions, NBA, batch scores."""
    from features.batch import build
    from features.spec import default_spec
    from features.tables.segments import snapshot_segments
    from features.warehouse import raw
    from training import jobs
    from training.datasets import Window, build_training_set
    from training.nba import promote_nba, train_nba
    from training.scoring import score_all

    home = tmp_path_factory.mktemp("demo-period")
    with environment(RAPPORT_HOME=str(home), MLFLOW_TRACKING_URI=None):
        settings = get_settings()
        settings.ensure_home()
        data = write(generate(1500, seed=42, end=END), home / "demo-data", "parquet")
        con = connect(settings.warehouse_path)
        ingest_demo(con, data["customers"].parent, now=END)
        spec = default_spec()  # the demo's step 3: segments as of the end of history
        snapshot_segments(raw(con), build(con, END), END, spec.version, END)
        training = build_training_set(con, Window(train_cutoffs=2))
        for kind in ("churn", "value"):
            jobs.train(kind, con, params=FAST_PARAMS, data=training)
            jobs.promote(kind)
        nba = train_nba(con, compare_methods=False, n_boot=30)
        promote_nba(nba.version)
        score_all(con, END)
        con.disconnect()
    return home


def _period(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RAPPORT_HOME", str(home))
    reset_settings()
    said: list[str] = []
    con = connect(get_settings().warehouse_path)
    try:
        simulated_period(con, get_settings(), END, said.append, lambda _: None)
    finally:
        con.disconnect()
        reset_settings()
    return "\n".join(said)


@pytest.mark.slow
def test_demo_prints_impact_beside_the_truth_and_replays_the_same(
    scored: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _period(scored, monkeypatch)
    assert "the campaign tool executes scores" in first
    assert "incr value/cust" in first  # the `rapport impact` table itself
    found = HEADLINE.search(first)
    assert found, first
    estimate, lo, hi = (_number(found[i]) for i in (1, 2, 3))
    treated, control = _number(found[5]), _number(found[6])
    truth = _number(found[7])
    assert all(math.isfinite(v) for v in (estimate, lo, hi, truth))
    assert lo < estimate < hi and treated > 10 * control > 0
    assert lo <= truth <= hi and found[8] == "inside", first

    # a second demo run on the same home: the same decisions played again, nothing new
    second = _period(scored, monkeypatch)
    assert "logged by an earlier demo run: played again" in second
    assert "inserted 0," in second and "quarantined 0" in second
    assert HEADLINE.search(second)[0] == found[0]  # type: ignore[index]


@pytest.mark.slow
def test_several_periods_each_turn_the_cycle_and_print_the_trajectory(
    scored: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rapport demo --periods 2`` on the small world: each period is decided, answered
    and measured, then the cycle runs on the period's clock (retrains on the new data,
    measures impact, re-scores); the next period decides with the cycle's scores."""
    import shutil
    from datetime import timedelta

    from features.tables.cycle import RUNS
    from features.tables.scores import latest_run
    from features.warehouse import raw
    from rapport.demo import PERIOD_DAYS, play_periods
    from training.cycle import CycleOptions

    home = tmp_path / "home"
    shutil.copytree(scored, home)  # MLflow artifacts stay in `scored`
    monkeypatch.setenv("RAPPORT_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    reset_settings()
    said: list[str] = []
    fast = CycleOptions(params=FAST_PARAMS, train_cutoffs=2, retrain_after_days=0, nba_boot=30)
    rows = play_periods(get_settings(), END, 2, said.append, lambda _: None, cycle=fast)
    text = "\n".join(said)
    ends = [END + timedelta(days=PERIOD_DAYS * k) for k in (1, 2)]
    assert [r.period for r in rows] == [
        f"{END:%Y-%m-%d} .. {ends[0]:%Y-%m-%d}",
        f"{ends[0]:%Y-%m-%d} .. {ends[1]:%Y-%m-%d}",
    ]
    assert len(HEADLINE.findall(text)) == 2, text  # each period measured beside the truth
    for row in rows:
        assert re.fullmatch(r"-?[\d,.]+ \[-?[\d,.]+, -?[\d,.]+\]", row.impact), row
        assert row.cycle.startswith("cycle done: ") and "retrain: churn v" in row.cycle, row
        assert re.fullmatch(r"0\.\d{3}( \(est\.\))?", row.churn_auc), row
        # coverage is realised only: the first scores' 90-day horizon ends after 2 periods
        assert row.coverage == "not yet", row
        assert "churn v" in row.champions and "nba v" in row.champions
    assert "== the trajectory, period by period" in text
    con = connect(get_settings().warehouse_path, read_only=True)
    try:
        db = raw(con)
        cycles = db.execute(f"SELECT status, as_of FROM {RUNS} ORDER BY as_of").fetchall()
        assert [c[0] for c in cycles] == ["done", "done"]
        assert [c[1] for c in cycles] == ends
        assert latest_run(db).as_of == ends[1]  # the second cycle re-scored
        measured = db.execute("SELECT DISTINCT run_id FROM impact").fetchall()
        assert sum(r[0].startswith("im-cy-") for r in measured) == 2  # the cycles' own
        decided = db.execute(
            "SELECT count(*) FROM campaign_log WHERE starts_with(decision_id, ?)",
            [f"demo-{ends[0]:%Y%m%d}-"],
        ).fetchone()
        assert decided and decided[0] > 1000  # period 2 decided with the first cycle's scores
    finally:
        con.disconnect()
        reset_settings()
