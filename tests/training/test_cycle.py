"""``rapport cycle``, ``rapport rollback`` and ``rapport promote --force`` on a small trained
workspace (demo data, churn and value trained fast and promoted).

Each test works on its own copy of one trained workspace. The kill tests run the cycle in
a real process, SIGKILL it when it announces a step, rerun it, and compare the end state
with an uninterrupted run on the same world (same registered versions, aliases, one scoring
run, one finished cycle run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from contract_rows import live_order
from sample_data import FAST_PARAMS, trained_workspace, use_home
from sample_data import warehouse_query as query

from features.tables import cycle as records
from features.tables.scores import RUNS as SCORE_RUNS
from features.warehouse import connect, raw
from models import registry
from models.bundle import bundled_champions
from rapport.cli import main
from rapport.settings import get_settings
from training.cycle import (
    NOTHING_TO_MONITOR,
    STEPS,
    CycleBusyError,
    CycleOptions,
    cycle_lock,
    run_cycle,
)
from training.overrides import ACTION_TAG, REASON_TAG

TESTS = Path(__file__).resolve().parents[1]
#: what the subprocess runs: the cycle with fast training, retraining as soon as data changes
CYCLE_SCRIPT = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from sample_data import FAST_PARAMS
from training.cycle import CycleOptions, run_cycle
say = lambda m: print(m, file=sys.stderr, flush=True)
result = run_cycle(CycleOptions(params=FAST_PARAMS, train_cutoffs=2, retrain_after_days=0), say)
print(result.summary(), flush=True)
sys.exit(0 if result.ok else 1)
"""
FAST = CycleOptions(params=FAST_PARAMS, train_cutoffs=2, retrain_after_days=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("cycle-base")
    trained_workspace(home, customers=1500, seed=3)
    return home


@pytest.fixture
def home(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the trained workspace as RAPPORT_HOME (MLflow artifacts stay in base)."""
    copy = tmp_path / "home"
    shutil.copytree(base, copy)
    # MLflow's set_tracking_uri (training) exports MLFLOW_TRACKING_URI, which would win
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield from use_home(copy, monkeypatch)


def add_outbox_orders(home: Path, n: int = 300, end: datetime | None = None) -> None:
    """Orders the service accepted in the days before ``end`` (default now), waiting in
    the outbox."""
    con = connect(home / "warehouse.duckdb", read_only=True)
    ids = [
        r[0] for r in raw(con).execute("SELECT customer_id FROM customers ORDER BY 1").fetchall()
    ]
    con.disconnect()
    rng = np.random.default_rng(5)
    now = end or datetime.now(UTC)
    folder = home / "outbox" / "orders"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        {
            "order_id": f"live-{i}",
            "customer_id": ids[int(rng.integers(len(ids)))],
            "ordered_at": (now - timedelta(hours=int(rng.integers(1, 200)))).isoformat(),
            "amount": round(float(rng.lognormal(3.5, 0.6)), 2),
        }
        for i in range(n)
    ]
    (folder / "batch-1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))


def add_outbox_decisions(
    home: Path, effect: float, n: int = 1200, decided: datetime | None = None
) -> None:
    """Decisions the service logged in the last days (or all at ``decided``), with their
    group (about a tenth in control, no action) and outcome; treated customers spend
    ``effect`` more on average (a positive effect: an exponential draw of that mean; a
    negative one: that much less, never below zero)."""
    con = connect(home / "warehouse.duckdb", read_only=True)
    ids = [
        r[0] for r in raw(con).execute("SELECT customer_id FROM customers ORDER BY 1").fetchall()
    ]
    con.disconnect()
    rng = np.random.default_rng(11)
    now = datetime.now(UTC)
    lines = []
    for i, customer in enumerate(ids[:n]):
        control = i % 10 == 0
        revenue = float(rng.gamma(1.0, 40.0))
        if not control:
            revenue = max(0.0, revenue + (float(rng.exponential(effect)) if effect > 0 else effect))
        at = decided or now - timedelta(days=3, hours=int(rng.integers(0, 48)))
        lines.append(
            {
                "decision_id": f"live-d{i}",
                "customer_id": customer,
                "decided_at": at.isoformat(),
                "action": "no_action" if control else "winback_email",
                "channel": "none" if control else "email",
                "propensity": 0.1 if control else 0.9,
                "group": "control" if control else "treated",
                "outcome": True,
                "revenue": round(revenue, 2),
            }
        )
    folder = home / "outbox" / "campaign_log"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "batch-1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))


def end_state() -> dict[str, Any]:
    """What a finished cycle leaves: versions, aliases, scoring runs, records, the store."""
    runs = query(f"SELECT * FROM {records.RUNS}")
    return {
        "versions": {k: [str(v.version) for v in registry.versions(k)] for k in registry.KINDS},
        "aliases": {k: registry.aliases(k) for k in registry.KINDS},
        "score_runs": len(query(f"SELECT * FROM {SCORE_RUNS}")),
        "cycle_runs": runs.status.tolist(),
        "orders": int(query("SELECT count(*) AS n FROM orders").n[0]),
        "bundled": bundled_champions().info.metadata["versions"],  # type: ignore[union-attr]
    }


def test_an_unchanged_world_promotes_nothing_and_a_second_run_does_nothing(home: Path) -> None:
    before = {k: registry.aliases(k) for k in registry.KINDS}
    first = run_cycle(FAST)
    assert first.status == "done", first.summary()
    steps = {s.name: s for s in first.steps}
    assert steps["retrain"].detail == "no kind due" and steps["promote"].status == "skipped"
    assert steps["monitor"].detail == NOTHING_TO_MONITOR  # said, not silent
    assert steps["impact"].status == "skipped"  # the history's decisions have no group
    assert steps["impact"].detail.startswith("nothing to compare yet (")
    assert {k: registry.aliases(k) for k in registry.KINDS} == before
    assert [str(v.version) for v in registry.versions("churn")] == ["1"]
    assert steps["score"].detail.startswith("1,500 customers")
    assert steps["materialize"].detail == "1,500 customer records"

    second = run_cycle(FAST)
    assert second.status == "nothing to do", second.summary()
    assert all(s.status == "skipped" for s in second.steps[1:])
    assert len(query(f"SELECT * FROM {SCORE_RUNS}")) == 1
    recorded = query(f"SELECT * FROM {records.RUNS} ORDER BY started_at")
    assert recorded.status.tolist() == ["done", "nothing to do"]
    assert recorded.summary[1].startswith(f"cycle {second.run_id} nothing to do")
    steps_table = query(f"SELECT * FROM {records.STEPS} WHERE run_id = '{second.run_id}'")
    assert sorted(steps_table.step) == sorted(STEPS)
    # and MLflow holds the run with its one-line summary
    from mlflow import MlflowClient

    client = MlflowClient(registry.tracking_uri())
    found = client.search_runs(
        [client.get_experiment_by_name("rapport").experiment_id],
        f"tags.`rapport.cycle_run` = '{second.run_id}'",
    )
    assert [r.data.tags["mlflow.note.content"] for r in found] == [second.line()]


def test_each_round_measures_the_realised_impact_against_control(home: Path) -> None:
    """Decisions with groups and outcomes arrive through the outbox: the cycle's impact
    step measures treated against control (run ``im-<cycle run>`` in the ``impact``
    table), the next round with new data measures again, a round with nothing new does not."""
    add_outbox_decisions(home, effect=60.0)
    first = run_cycle(FAST)
    assert first.ok, first.summary()
    step = {s.name: s for s in first.steps}["impact"]
    assert step.status == "done" and step.detail.startswith(f"run im-{first.run_id}:"), step
    rows = query("SELECT * FROM impact WHERE period = 'all' AND \"by\" = ''")
    assert rows.run_id.tolist() == [f"im-{first.run_id}"]
    overall = rows.iloc[0]
    assert overall.treated_customers == 1080 and overall.control_customers == 120
    assert overall.incremental_value_lo > 0  # the effect (60 revenue) is there and found
    assert f"{overall.incremental_value:,.2f}" in step.detail

    assert run_cycle(FAST).status == "nothing to do"
    add_outbox_orders(home, n=50)
    third = run_cycle(FAST)
    assert {s.name: s for s in third.steps}["impact"].status == "done", third.summary()
    runs = query("SELECT DISTINCT run_id FROM impact ORDER BY run_id").run_id.tolist()
    assert runs == sorted([f"im-{first.run_id}", f"im-{third.run_id}"])


def test_events_acknowledged_before_and_during_a_cycle_are_in_the_store_after_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cycle's materialize replays the outbox as `rapport materialize` does (issue 22):
    an event the service acknowledged in a segment it then sealed (the ingest step loads
    it), one still in the service's open segment (ingest never reads those) and one
    acknowledged while the cycle ran (after its ingest step) are all in the online store
    after the cycle, which reloaded every record from the warehouse."""
    from features.online.events import Outbox, apply_events
    from features.online.store import open_store
    from training import cycle

    no_retrain = CycleOptions(params=FAST_PARAMS, train_cutoffs=2, retrain_after_days=3650)
    assert run_cycle(no_retrain).ok  # a deployment: scores, segments, the loaded store
    settings = get_settings()
    con = connect(settings.warehouse_path, read_only=True)
    ids = [r[0] for r in raw(con).execute("SELECT customer_id FROM customers LIMIT 3").fetchall()]
    con.disconnect()
    store = open_store(settings.online_store_url)
    sealed, running = Outbox(settings.outbox_dir), Outbox(settings.outbox_dir)
    apply_events(store, sealed, {"orders": [live_order("ack-sealed", ids[0])]})
    sealed.close()
    apply_events(store, running, {"orders": [live_order("ack-open", ids[1])]})
    scored = cycle._Cycle._score

    def acknowledged_while_scoring(self: Any) -> tuple[str, str]:
        apply_events(store, running, {"orders": [live_order("ack-during", ids[2])]})
        return scored(self)

    monkeypatch.setattr(cycle._Cycle, "_score", acknowledged_while_scoring)
    result = run_cycle(no_retrain)
    assert result.status == "done", result.summary()
    steps = {s.name: s for s in result.steps}
    assert steps["ingest"].detail.startswith("1 new rows"), steps["ingest"].detail
    assert steps["materialize"].status == "done"
    held = store.get_many(ids)
    store.close()
    orders = {c: set(held[c]["orders"]["order_id"]) for c in ids}
    assert "ack-sealed" in orders[ids[0]] and "ack-open" in orders[ids[1]]
    assert "ack-during" in orders[ids[2]]
    warehouse = query("SELECT order_id FROM orders WHERE order_id LIKE 'ack-%'")
    assert warehouse.order_id.tolist() == ["ack-sealed"]  # the others wait in the outbox
    running.close()


def test_the_cli_exits_zero_and_a_held_lock_skips_the_run(home: Path) -> None:
    with cycle_lock(home / "cycle.lock"):
        with pytest.raises(CycleBusyError, match=f"another cycle is running \\(pid {os.getpid()}"):
            run_cycle(FAST)
        held = CliRunner().invoke(main, ["cycle"])
        assert held.exit_code == 0 and "cycle skipped: another cycle is running" in held.output
    assert not (home / "warehouse.duckdb.wal").exists()
    history = CliRunner().invoke(main, ["cycle", "--history"])
    assert history.output.strip() == "no cycle has run yet"


def run_script(home: Path, kill_at: str | None = None) -> tuple[int, str]:
    """Run the cycle in a process; with ``kill_at``, SIGKILL it when it starts that step."""
    env = {**os.environ, "RAPPORT_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", CYCLE_SCRIPT],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None and proc.stdout is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if kill_at and line.strip() == f"cycle step: {kill_at}":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=600)
    return proc.returncode, proc.stdout.read() + "".join(seen)


@pytest.fixture(scope="module")
def uninterrupted(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The end state of one uninterrupted cycle after new data arrived."""
    copy = tmp_path_factory.mktemp("cycle-reference") / "home"
    shutil.copytree(base, copy)
    add_outbox_orders(copy)
    code, output = run_script(copy)
    assert code == 0, output
    with pytest.MonkeyPatch.context() as patch:
        yield from _state_in(copy, patch)


def _state_in(home: Path, patch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for _ in use_home(home, patch):
        yield end_state()


def test_new_data_retrains_the_due_kinds_and_records_every_step(
    uninterrupted: dict[str, Any],
) -> None:
    # churn and value were retrained on the new data: one new version each, gated
    assert uninterrupted["versions"]["churn"] == ["1", "2"]
    assert uninterrupted["versions"]["value"] == ["1", "2"]
    assert uninterrupted["cycle_runs"] == ["done"] and uninterrupted["score_runs"] == 1
    assert uninterrupted["orders"] > 0
    champions = {k: a["champion"] for k, a in uninterrupted["aliases"].items() if a}
    assert uninterrupted["bundled"] == champions


#: retrain and score write most and run in the default suite; a kill at the start of every
#: other step is a slow test (each is a killed run plus a full rerun with training)
KILLED = [
    pytest.param(step, marks=[] if step in ("retrain", "score") else [pytest.mark.slow])
    for step in STEPS
]


@pytest.mark.parametrize("step", KILLED)
def test_a_cycle_killed_in_a_step_then_rerun_ends_as_an_uninterrupted_one(
    step: str, home: Path, uninterrupted: dict[str, Any]
) -> None:
    add_outbox_orders(home)
    code, output = run_script(home, kill_at=step)
    assert code == -signal.SIGKILL, output
    code, output = run_script(home)
    assert code == 0, output
    assert "(resumed) done" in output, output
    state = end_state()
    assert state | {"cycle_runs": None} == uninterrupted | {"cycle_runs": None}
    runs = query(f"SELECT status, attempts FROM {records.RUNS}")
    assert runs.status.tolist() == ["done"] and runs.attempts.tolist() == [2]


def test_force_promote_and_rollback_are_recorded_and_restore_exactly(home: Path) -> None:
    runner = CliRunner()
    con = connect(get_settings().warehouse_path, read_only=True)
    from training.datasets import Window, build_training_set
    from training.jobs import train

    data = build_training_set(con, Window(train_cutoffs=2))
    train("churn", con, params={**FAST_PARAMS, "num_boost_round": 5}, data=data)  # v2
    con.disconnect()
    refused = runner.invoke(main, ["promote", "churn", "--force"])
    assert refused.exit_code == 2 and "--force needs --version" in refused.output
    forced = runner.invoke(main, ["promote", "churn", "--version", "2", "--force", "--reason", "x"])
    assert forced.exit_code == 0, forced.output
    assert "churn@champion forced to v2 (was v1), recorded with reason: x" in forced.output
    assert registry.aliases("churn") == {"champion": "2", "previous": "1"}

    back = runner.invoke(main, ["rollback", "churn", "--reason", "worse in the field"])
    assert back.exit_code == 0, back.output
    assert "rolled back to v1 (was v2)" in back.output
    assert registry.aliases("churn") == {"champion": "1", "previous": "2"}
    champions = registry.load_champions()
    assert champions.versions["churn"] == "1"
    rows = data.part("test")
    first = registry.load_model("churn", version="1")[0].predict_proba(rows)
    np.testing.assert_array_equal(champions.churn.predict_proba(rows), first)
    assert not np.allclose(registry.load_model("churn", version="2")[0].predict_proba(rows), first)
    assert bundled_champions().info.metadata["versions"]["churn"] == "1"  # type: ignore[union-attr]
    tags = registry.get_version("churn", version="1").tags
    assert tags[REASON_TAG] == "worse in the field" and tags[ACTION_TAG].startswith("rollback")
    changes = query(f"SELECT kind, action, version, replaced, reason FROM {records.CHANGES}")
    assert changes.values.tolist() == [
        ["churn", "force", "2", "1", "x"],
        ["churn", "rollback", "1", "2", "worse in the field"],
    ]
    to = runner.invoke(main, ["rollback", "churn", "--to", "9"])
    assert to.exit_code == 1 and "no registered churn model version 9" in to.output
    to = runner.invoke(main, ["rollback", "value"])
    assert to.exit_code == 1 and "no value@previous" in to.output


def test_a_champion_worse_than_its_predecessor_on_newer_labels_is_rolled_back(
    home: Path,
) -> None:
    """A churn v2 evaluated three months before the latest matured labels, and poor (one
    two-leaf tree), forced over v1: the cycle's guard scores both on the newer labels,
    finds v2 worse beyond the margin and restores v1, recorded as an automatic rollback."""
    from training.datasets import Window, build_training_set, default_as_of
    from training.jobs import train

    con = connect(get_settings().warehouse_path, read_only=True)
    earlier = default_as_of(con, 90) - timedelta(days=91)
    data = build_training_set(con, Window(earlier, train_cutoffs=2))
    poor = {**FAST_PARAMS, "num_boost_round": 1, "num_leaves": 2}
    assert train("churn", con, params=poor, data=data).version == "2"
    con.disconnect()
    forced = CliRunner().invoke(
        main, ["promote", "churn", "--version", "2", "--force", "--reason", "a test"]
    )
    assert forced.exit_code == 0, forced.output

    result = run_cycle(FAST)
    assert result.ok, result.summary()
    guard = {s.name: s for s in result.steps}["guard"].detail
    assert guard.startswith("churn rolled back to v1: realised auc"), guard
    assert "champion v2" in guard and "worse by more than 0.02" in guard
    assert registry.aliases("churn") == {"champion": "1", "previous": "2"}
    assert registry.aliases("value") == {"champion": "1"}  # the good one holds
    assert bundled_champions().info.metadata["versions"]["churn"] == "1"  # type: ignore[union-attr]
    changes = query(f"SELECT action, version, replaced, reason, cycle_run FROM {records.CHANGES}")
    last = changes.iloc[-1]
    assert (last.action, last.version, last.replaced) == ("auto_rollback", "1", "2")
    assert last.cycle_run == result.run_id and "worse by more than" in last.reason
    tags = registry.get_version("churn", version="1").tags
    assert tags[ACTION_TAG].startswith("auto_rollback")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [None, "channel"])
def test_a_cycle_after_drift_retrains_and_without_it_does_not(
    scenario: str | None, tmp_path: Path
) -> None:
    """Champions trained before the change, scored and monitored before and after it (a
    broken pipeline empties the web interactions from the change on), then new orders
    arrive: with retraining by age off (a year), only the drift's alerts make the cycle
    retrain; the unchanged world's cycle retrains nothing."""
    import monitor_worlds as mw

    home = tmp_path / "world"
    with mw.world_home(home):
        mw.load_world(home, 1500, 3, scenario)
        mw.train_before_change()
        timeline = mw.monitor_monthly(scenario, mw.MONITOR_AT[:2])
        alerted = any(len(found) for found in timeline.alerts.values())
        assert alerted == (scenario is not None), timeline.alerts
        add_outbox_orders(home, end=mw.END)  # the simulated world ends there
        options = CycleOptions(params=FAST_PARAMS, train_cutoffs=2, retrain_after_days=365)
        result = run_cycle(options)
        assert result.ok, result.summary()
        retrain = {s.name: s for s in result.steps}["retrain"]
        if scenario is None:
            assert retrain.detail == "no kind due", result.summary()
            assert [str(v.version) for v in registry.versions("churn")] == ["1"]
        else:
            assert "monitoring alerts since v1 was crowned" in retrain.detail, result.summary()
            assert [str(v.version) for v in registry.versions("churn")] == ["1", "2"]
            assert [str(v.version) for v in registry.versions("value")] == ["1", "2"]


def test_a_policy_that_loses_against_control_is_rolled_back_by_rapport_cycle(home: Path) -> None:
    """NBA v1 crowned, then v2 over it (v1 kept as @previous). The decisions made under v2
    come back through the outbox with their groups and outcomes, and its treated customers
    spend less than the control group: `rapport cycle` ingests them, measures the policy's
    realised incremental value against control (impact step), finds its 95% interval
    entirely below zero (guard step), restores exactly v1 (aliases, the service's bundle,
    the cycle's own scores), records it as an automatic rollback and says so. A later
    cycle with new data keeps v1: the loss was v2's, measured before v1 came back."""
    from features.batch import build
    from features.spec import default_spec
    from features.tables.segments import snapshot_segments
    from training.nba import train_nba
    from training.overrides import force_promote

    con = connect(get_settings().warehouse_path)
    try:
        now = datetime.now(UTC)  # the segments NBA training reads, as `rapport features` stores
        snapshot_segments(raw(con), build(con, now), now, default_spec().version, now)
        for version in ("1", "2"):
            assert train_nba(con, compare_methods=False, n_boot=30).version == version
            force_promote(con, "nba", version, "a test crowns it")
    finally:
        con.disconnect()
    assert registry.aliases("nba") == {"champion": "2", "previous": "1"}
    crowned = registry.crowned_at("nba", registry.get_version("nba", version="2"))
    reign = crowned + (datetime.now(UTC) - crowned) / 2  # decided while v2 was the champion
    add_outbox_decisions(home, effect=-30.0, decided=reign)

    ran = CliRunner().invoke(main, ["cycle"])
    assert ran.exit_code == 0, ran.output
    run_id = query(f"SELECT run_id FROM {records.RUNS}").run_id[0]
    measured = query(
        "SELECT * FROM impact WHERE run_id = ? AND period = 'all' AND \"by\" = ''",
        [f"im-{run_id}"],
    ).iloc[0]
    assert measured.treated_customers == 1080 and measured.control_customers == 120
    assert measured.incremental_value_hi < 0  # the policy truly lost against control
    impact_runs = query("SELECT DISTINCT run_id FROM impact").run_id.tolist()
    assert impact_runs == [f"im-{run_id}"]  # the guard's own measure appends nothing
    guard = query(
        f"SELECT status, detail FROM {records.STEPS} WHERE run_id = ? AND step = 'guard'",
        [run_id],
    ).iloc[0]
    assert guard.status == "done"
    assert guard.detail.startswith("nba rolled back to v1: realised incremental value"), guard
    assert guard.detail.endswith("entirely below zero")
    assert f"{measured.incremental_value_hi:.2f}]" in guard.detail
    assert f"guard        done     {guard.detail}" in ran.output  # and the command says so
    assert registry.aliases("nba") == {"champion": "1", "previous": "2"}
    assert registry.load_champions().versions["nba"] == "1"
    assert bundled_champions().info.metadata["versions"]["nba"] == "1"  # type: ignore[union-attr]
    scored = query(f"SELECT nba_version FROM {SCORE_RUNS}")
    assert scored.nba_version.tolist() == ["1"]  # the cycle scored with v1 again
    change = query(f"SELECT * FROM {records.CHANGES}").iloc[-1]
    assert (change.kind, change.action, change.version, change.replaced) == (
        "nba",
        "auto_rollback",
        "1",
        "2",
    )
    assert change.cycle_run == run_id and change.reason in guard.detail
    assert registry.get_version("nba", version="1").tags[ACTION_TAG].startswith("auto_rollback")

    add_outbox_orders(home, n=50)  # the next round: new data, the same measured loss
    again = run_cycle(CycleOptions(params=FAST_PARAMS, train_cutoffs=2, retrain_after_days=3650))
    assert again.ok, again.summary()
    assert {s.name: s for s in again.steps}["guard"].detail == "champions hold", again.summary()
    changes = query(f"SELECT action FROM {records.CHANGES} WHERE kind = 'nba'")
    assert changes.action.tolist() == ["force", "force", "auto_rollback"]
