"""Target lists: filters, budget selection against brute force, consent / contact policy /
suppression always applied, profitable-only, expression errors, definitions, export round
trip, the one path (``make_list``) over a real warehouse with its two sinks' contracts,
and the audit tables written directly (``rapport targets``) and through the outbox (lists
made by the service, recorded by ``rapport ingest --outbox``).

The selection (:mod:`models.targeting`) runs on synthetic score frames; no models needed.
"""

from __future__ import annotations

import itertools
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sample_data import load_tables, random_tables

from features.control import NO_CONTROL
from features.online.events import Outbox
from features.outbox_ingest import ingest_outbox
from features.spec import default_spec
from features.tables.lists import (
    OUTBOX_LISTS,
    AuditTables,
    WarehouseLists,
    WarehouseUnavailableError,
    add_suppressions,
    check_export,
    definition_texts,
    new_list_id,
    outbox_lines,
    read_suppression_file,
    write_members,
)
from features.tables.scores import RUNS, RUNS_DDL, SCORES, RunInfo
from features.warehouse import connect, raw
from models.catalog import default_catalog
from models.expressions import ExpressionError, parse
from models.targeting import (
    BASIS_UPLIFT,
    BASIS_VALUE_AT_RISK,
    TargetDefinition,
    TargetError,
    TargetList,
    check_filter,
    default_definitions,
    definition_from,
    feature_subset,
    knapsack,
    lookup,
    make_list,
    needed_features,
    parse_definitions,
    saved_definitions,
    select_targets,
)

CATALOG = default_catalog()


def scores(n: int = 200, seed: int = 0, uplift: bool = True) -> pd.DataFrame:
    """Scores plus the features arbitration reads, everyone allowed by default."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in range(n)],
            "churn_probability": rng.uniform(0, 1, n),
            "value_mean": rng.gamma(2, 100, n),
            "value_p10": 0.0,
            "value_p50": rng.gamma(2, 80, n),
            "value_p90": 500.0,
            "abc_tier": rng.choice(["A", "B", "C"], n),
            "rfm_segment": rng.choice(["loyal", "at_risk", "lost"], n),
            "email_opt_in": 1.0,
            "phone_opt_in": 1.0,
            "contacts_email_30d": 0.0,
            "contacts_call_30d": 0.0,
            "orders_365d": 2.0,
            "complaints_90d": 0.0,
            "days_since_last_order": 30.0,
            "days_since_last_contact": rng.choice([3.0, 20.0, np.nan], n),
        }
    )
    for action in CATALOG.actions[1:]:
        frame[action.cooldown_field] = np.nan
        if uplift:
            frame[f"uplift_conversion_{action.id}"] = rng.uniform(0, 0.2, n)
            frame[f"uplift_revenue_{action.id}"] = rng.uniform(0, 30, n)
    return frame


# --------------------------------------------------------------------------- knapsack
def brute_force(values: np.ndarray, costs: np.ndarray, budget: float) -> float:
    best = 0.0
    for r in range(len(values) + 1):
        for subset in itertools.combinations(range(len(values)), r):
            chosen = list(subset)
            if costs[chosen].sum() <= budget + 1e-9:
                best = max(best, float(values[chosen].sum()))
    return best


@pytest.mark.parametrize("seed", range(60))
def test_budget_selection_is_the_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 11))
    values = np.round(rng.normal(5, 4, n), 2)
    costs = rng.choice([0.0, 0.1, 2.0, 4.0, 8.0, 3.3], n)
    budget = float(rng.choice([0, 1, 5, 9.9, 13, 20]))
    choice = knapsack(values, costs, budget)
    assert costs[choice.chosen].sum() <= budget + 1e-9
    assert values[choice.chosen].sum() == pytest.approx(brute_force(values, costs, budget))
    assert choice.exact
    # the greedy fallback stays feasible and its bound really bounds the optimum
    greedy = knapsack(values, costs, budget, max_work=0)
    assert costs[greedy.chosen].sum() <= budget + 1e-9
    assert greedy.bound >= brute_force(values, costs, budget) - 1e-9


def test_greedy_by_ratio_is_not_optimal_but_the_knapsack_is() -> None:
    values, costs = np.array([7.0, 4.0, 4.0]), np.array([5.0, 4.0, 4.0])
    # ratio picks the 7/5 first and then nothing fits; the optimum is 4 + 4
    assert values[knapsack(values, costs, 8.0).chosen].sum() == 8.0
    assert values[knapsack(values, costs, 8.0, max_work=0).chosen].sum() == 7.0


def test_one_cost_is_top_n_by_value() -> None:
    values = np.arange(100, dtype=float)
    choice = knapsack(values, np.full(100, 8.0), 80.0)
    assert sorted(np.flatnonzero(choice.chosen)) == list(range(90, 100))


def test_a_huge_budget_buys_everything_useful() -> None:
    # 1e307 in cents overflowed (OverflowError, a 500 on POST /targets): issue 22
    values, costs = np.array([5.0, -1.0, 3.0]), np.array([2.5, 1.0, 0.0])
    for budget in (1e307, sys.float_info.max):
        choice = knapsack(values, costs, budget)
        assert list(choice.chosen) == [True, False, True] and choice.exact


def test_bad_budget() -> None:
    with pytest.raises(TargetError):
        knapsack(np.ones(2), np.ones(2), -1)


# --------------------------------------------------------------------------- selection
def test_filter_and_action_and_sort() -> None:
    frame = scores()
    d = TargetDefinition(filter="abc_tier == 'A' and churn_probability > 0.3", action="cross_sell")
    sel = select_targets(frame, CATALOG, d)
    ids = set(frame[(frame.abc_tier == "A") & (frame.churn_probability > 0.3)].customer_id)
    assert set(sel.members.customer_id) == ids
    assert (sel.members.action == "cross_sell").all() and (sel.members.channel == "email").all()
    assert sel.members.expected_value.is_monotonic_decreasing
    assert list(sel.members["rank"]) == list(range(1, len(ids) + 1))
    assert sel.basis == BASIS_UPLIFT
    asc = select_targets(frame, CATALOG, d.model_copy(update={"sort": "churn_probability:asc"}))
    assert asc.members.churn_probability.is_monotonic_increasing


def test_filter_on_a_feature_with_nulls() -> None:
    frame = scores()
    d = TargetDefinition(filter="days_since_last_contact >= 14", action="cross_sell")
    sel = select_targets(frame, CATALOG, d)
    assert set(sel.members.customer_id) == set(
        frame[frame.days_since_last_contact >= 14].customer_id
    )


def test_consent_contact_policy_cooldown_and_suppression_always_apply() -> None:
    frame = scores(60)
    frame.loc[0:9, "email_opt_in"] = 0.0
    frame.loc[10:14, "email_opt_in"] = np.nan
    frame.loc[15:19, "contacts_email_30d"] = 2.0  # policy: at most 2 emails in 30 days
    frame.loc[20:24, "days_since_action_cross_sell"] = 3.0  # cool-down 14 days
    frame = pd.concat([frame, frame.iloc[[30, 31]]])  # duplicates
    suppressed = {"C0040", "C0041", "C9999"}
    d = TargetDefinition(action="cross_sell")
    sel = select_targets(frame, CATALOG, d, suppressed=suppressed)
    ids = set(sel.members.customer_id)
    assert not ids & {f"C{i:04d}" for i in range(25)}
    assert not ids & suppressed
    assert sel.members.customer_id.is_unique and len(ids) == 60 - 25 - 2
    assert sel.removed["no consent"] == 15 and sel.removed["contact policy"] == 5
    assert sel.removed["cool-down"] == 5 and sel.removed["duplicates"] == 2
    assert sel.removed["suppressed"] == 2
    # a filter that asks for them explicitly does not override anything
    d = TargetDefinition(filter="email_opt_in == 0 or customer_id == 'C0040'", action="cross_sell")
    assert select_targets(frame, CATALOG, d, suppressed=suppressed).count == 0
    # nor does the budget or the best-action mode
    best = select_targets(frame, CATALOG, TargetDefinition(budget=1e6), suppressed=suppressed)
    emailed = best.members[best.members.channel == "email"].customer_id
    assert not set(emailed) & {f"C{i:04d}" for i in range(25)}
    assert not set(best.members.customer_id) & suppressed


def test_reach_counts_consent_per_channel_and_action_with_the_best_action() -> None:
    frame = scores(60)
    frame.loc[0:9, "email_opt_in"] = 0.0
    frame.loc[10:14, "email_opt_in"] = np.nan  # unknown consent is no consent
    frame.loc[0:29, "phone_opt_in"] = 0.0
    frame.loc[15:19, "contacts_email_30d"] = 2.0
    frame["churn_probability"] = 0.7  # every rule but loyalty_upgrade's holds
    frame["complaints_90d"] = 1.0
    frame["days_since_last_order"] = 90.0
    frame.loc[40:59, "rfm_segment"] = "elsewhere"
    sel = select_targets(frame, CATALOG, TargetDefinition(filter="rfm_segment != 'elsewhere'"))
    assert sel.consent == {"call": 10, "email": 25}  # of the 40 past the filter
    reach = {r["action"]: r for r in sel.reach}
    assert set(reach) == set(CATALOG.ids[1:])
    email = reach["winback_email"]
    assert (email["channel"], email["eligible"], email["consented"]) == ("email", 40, 25)
    assert email["allowed"] == 20  # 5 more at the contact limit
    assert reach["service_callback"]["consented"] == reach["service_callback"]["allowed"] == 10
    assert reach["loyalty_upgrade"]["eligible"] == 0
    # chosen: each customer's best allowed action, adding up to the list before budget
    assert sum(r["chosen"] for r in sel.reach) == sel.count
    assert {a: reach[a]["chosen"] for a in sel.segment_mix("action")} == sel.segment_mix("action")
    assert sel.stats()["consent"] == sel.consent


def test_budget_on_lists_is_respected_and_optimal() -> None:
    frame = scores(300)
    d = TargetDefinition(budget=250.0)
    sel = select_targets(frame, CATALOG, d)
    assert 0 < sel.total_cost <= 250.0
    assert sel.budget_method and sel.budget_method.startswith("exact")
    assert set(sel.members.action) <= set(CATALOG.ids[1:])
    top = select_targets(frame, CATALOG, TargetDefinition(budget=250.0, top=5))
    assert top.count == 5
    assert list(top.members.customer_id) == list(sel.members.customer_id[:5])


def test_profitable_only_drops_losses_before_the_budget() -> None:
    frame = scores(300)
    frame["uplift_revenue_retention_discount"] *= 0.2  # many offers now cost more than they bring
    plain = TargetDefinition(action="retention_discount")
    everyone = select_targets(frame, CATALOG, plain).members
    losing = everyone[everyone.expected_value <= everyone.cost]
    assert 0 < len(losing) < len(everyone)
    sel = select_targets(frame, CATALOG, plain.model_copy(update={"profitable_only": True}))
    assert set(sel.members.customer_id) == set(everyone.customer_id) - set(losing.customer_id)
    assert sel.removed["not profitable"] == len(losing) and "profitable only" in sel.summary()
    # with a budget: the knapsack runs on the profitable ones only, so the net can only grow
    budget = 8.0 * (len(everyone) - len(losing) // 2)
    both = {"budget": budget}
    by_value = select_targets(frame, CATALOG, plain.model_copy(update=both))
    by_net = select_targets(
        frame, CATALOG, plain.model_copy(update={**both, "profitable_only": True})
    )
    assert (by_net.members.net_value > 0).all() and by_net.total_cost <= budget
    assert (by_value.members.net_value <= 0).any()
    net = by_net.total_expected_value - by_net.total_cost
    assert net > by_value.total_expected_value - by_value.total_cost
    profitable = everyone[everyone.expected_value > everyone.cost]
    values, costs = profitable.expected_value.to_numpy(), profitable.cost.to_numpy()
    best = values[knapsack(values, costs, budget).chosen].sum()
    assert by_net.total_expected_value == pytest.approx(best)
    # the option from a saved definition, the CLI / HTTP options and the example list
    assert definition_from({"profitable_only": True}).profitable_only
    saved = parse_definitions("lists:\n  mine: {action: cross_sell, profitable_only: true}\n")
    assert saved["mine"].profitable_only
    assert default_definitions()["at_risk_high_value"].profitable_only


def test_without_uplift_the_value_at_risk_is_used_and_said() -> None:
    frame = scores(50, uplift=False)
    sel = select_targets(frame, CATALOG, TargetDefinition(action="retention_discount"))
    assert sel.basis == BASIS_VALUE_AT_RISK and "value at risk" in sel.summary()
    eligible = frame[frame.churn_probability >= 0.25]
    expected = eligible.churn_probability * eligible.value_p50 * 0.3
    got = sel.members.set_index("customer_id").expected_value
    assert np.allclose(got.loc[eligible.customer_id].to_numpy(), expected.to_numpy())


def test_bad_definitions() -> None:
    frame = scores(10)
    with pytest.raises(TargetError, match="unknown action"):
        select_targets(frame, CATALOG, TargetDefinition(action="free_lunch"))
    with pytest.raises(TargetError, match="no_action"):
        select_targets(frame, CATALOG, TargetDefinition(action="no_action"))
    with pytest.raises(TargetError, match="sort"):
        select_targets(frame, CATALOG, TargetDefinition(sort="nope"))
    with pytest.raises(ExpressionError, match="at column 10"):
        definition_from({"filter": "abc_tier = 'A'"})
    with pytest.raises(TargetError, match="top"):
        definition_from({"top": 0})


def test_expression_errors_point_at_the_token() -> None:
    spec = default_spec()
    with pytest.raises(ExpressionError) as err:
        check_filter(parse("abc_tier == 'A' and churn_prob > 0.5"), spec)
    text = str(err.value)
    assert "unknown field 'churn_prob'" in text and "churn_probability" in text
    assert text.splitlines()[-1] == " " * 22 + "^" * 10
    with pytest.raises(ExpressionError, match="cannot compare"):
        check_filter(parse("region > 3"), spec)


def test_saved_definitions() -> None:
    saved = default_definitions()
    assert {"at_risk_high_value", "winback_lapsed"} <= set(saved)
    spec = default_spec()
    for d in saved.values():
        if d.expression is not None:
            check_filter(d.expression, spec)
    with pytest.raises(TargetError, match=r"'oops'.*top"):
        parse_definitions("lists:\n  oops: {top: -1}\n")
    with pytest.raises(TargetError, match="bad filter"):
        parse_definitions("lists:\n  oops: {filter: 'a >'}\n")
    with pytest.raises(TargetError, match=r"unknown|Extra"):
        parse_definitions("lists:\n  oops: {budgett: 3}\n")


def test_needed_features_and_subset_spec() -> None:
    spec = default_spec()
    d = TargetDefinition(filter="email_open_rate_90d > 0.2 and churn_probability > 0.1")
    names = needed_features(d, CATALOG, spec)
    assert "email_open_rate_90d" in names and "churn_probability" not in names
    assert {"email_opt_in", "contacts_email_30d", "days_since_action_cross_sell"} <= set(names)
    sub = feature_subset(spec, names)
    assert set(names) <= set(sub.names) and len(sub.aggs) < len(spec.aggs)
    assert {"emails_open_90d", "emails_sent_90d"} <= {a.name for a in sub.aggs}
    assert {a.name for a in sub.attributes} == {a.name for a in spec.attributes}
    narrow = feature_subset(spec, ["spend_90d", "email_opt_in"], all_attributes=False)
    assert [a.name for a in narrow.attributes] == ["email_opt_in"]
    assert set(narrow.names) == {"spend_90d", "email_opt_in"}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_round_trip(tmp_path: Path, suffix: str) -> None:
    sel = select_targets(scores(40), CATALOG, TargetDefinition(action="cross_sell", top=7))
    path = write_members(sel.members, tmp_path / f"list{suffix}")
    back = (
        pd.read_csv(path, dtype={"customer_id": str}) if suffix == ".csv" else pd.read_parquet(path)
    )
    pd.testing.assert_frame_equal(back, sel.members, check_dtype=False)
    with pytest.raises(TargetError):
        write_members(sel.members, tmp_path / "list.xlsx")
    with pytest.raises(TargetError, match="xlsx"):
        check_export(tmp_path / "list.xlsx")
    assert not (tmp_path / "list.xlsx").exists()


def test_suppression_files(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("C1\n# comment\n\nC2\n")
    pd.DataFrame({"customer_id": ["C3"]}).to_csv(tmp_path / "ids.csv", index=False)
    assert read_suppression_file(tmp_path / "ids.txt") == {"C1", "C2"}
    assert read_suppression_file(tmp_path / "ids.csv") == {"C3"}
    pd.DataFrame({"id": ["C3"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(TargetError, match="customer_id"):
        read_suppression_file(tmp_path / "bad.csv")


# --------------------------------------------------------------------------- audit
NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)
TABLES = ("target_lists", "target_list_members")
RUN = RunInfo("sr-test", NOW, NOW, 300, {"churn": "1"}, "fs-test", {})


def audit_rows(db: Any, list_id: str) -> tuple[dict, list[tuple]]:
    """A list's audit row (without its id and creation time) and its members."""
    lists = db.execute("SELECT * FROM target_lists WHERE list_id = ?", [list_id])
    names = [c[0] for c in lists.description]
    (row,) = lists.fetchall()
    members = db.execute(
        "SELECT * EXCLUDE (list_id) FROM target_list_members WHERE list_id = ? ORDER BY rank",
        [list_id],
    ).fetchall()
    found = dict(zip(names, row, strict=True))
    for volatile in ("list_id", "created_at"):
        found.pop(volatile)
    return found, members


def test_lists_from_the_outbox_are_recorded_like_the_cli_records_them(tmp_path: Path) -> None:
    """``AuditTables`` (rapport targets) and outbox -> ``ingest_outbox`` (the service's lists)
    write the same audit rows; torn lists are skipped, replays change nothing."""
    sel = select_targets(scores(300), CATALOG, TargetDefinition(name="t", budget=100.0))
    empty = select_targets(scores(5), CATALOG, TargetDefinition(filter="customer_id == 'x'"))
    con = connect(tmp_path / "warehouse.duckdb")
    db = raw(con)
    direct = TargetList(sel, RUN, NOW, new_list_id(), output=tmp_path / "list.csv")
    AuditTables(con).record(*direct.audit())
    outbox = Outbox(tmp_path / "outbox", seal_after=0.0)
    via, nobody, torn = new_list_id(), new_list_id(), new_list_id()
    outbox.append(
        OUTBOX_LISTS, outbox_lines(*sel.audit(via, "sr-test", NOW, NOW, str(direct.output)))
    )
    outbox.append(OUTBOX_LISTS, outbox_lines(*empty.audit(nobody, "sr-test", NOW, NOW)))
    outbox.append(OUTBOX_LISTS, outbox_lines(*sel.audit(torn, "sr-test", NOW, NOW))[:-1])
    folder = tmp_path / "outbox" / OUTBOX_LISTS
    assert len(list(folder.glob("*.jsonl"))) == 3  # one sealed segment per list
    report = ingest_outbox(con, tmp_path / "outbox", datetime.now(UTC))
    assert report.lists is not None and report.lists.recorded == 2
    assert report.lists.members == sel.count and report.lists.incomplete == [torn]
    assert "incomplete and skipped 1" in report.summary()
    assert audit_rows(db, via) == audit_rows(db, direct.list_id)
    row, members = audit_rows(db, via)
    assert row["customers"] == sel.count == len(members) > 0
    assert [m[1] for m in members] == sel.members.customer_id.tolist()
    assert json.loads(row["definition"]) == sel.definition.model_dump()
    assert audit_rows(db, nobody)[0]["customers"] == 0 and audit_rows(db, nobody)[1] == []
    # replay the same segments: nothing new
    for path in (folder / "done").glob("*.jsonl"):
        path.rename(folder / path.name)
    again = ingest_outbox(con, tmp_path / "outbox", datetime.now(UTC))
    assert again.lists is not None and again.lists.recorded == 0 and again.lists.read == 2
    counts = [db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES]
    assert counts == [3, 2 * sel.count]
    con.disconnect()


# --------------------------------------------------------------------------- the one path
def scored_warehouse(path: Path, n: int = 60) -> list[str]:
    """A warehouse with contract tables (random, valid) and one scoring run of ``n``
    customers with uplift (score columns only: the list computes features itself).
    Returns the customer ids."""
    tables = random_tables(seed=5, customers=n, events=400)
    ids = tables["customers"].customer_id.tolist()
    # everyone may get an email, nobody has been contacted: what decides is the list
    tables["customers"]["email_opt_in"] = True
    tables["interactions"] = tables["interactions"][tables["interactions"].channel != "email"]
    tables["campaign_log"] = tables["campaign_log"].iloc[:0]
    con = connect(path)
    load_tables(con, tables)
    frame = scores(n)
    frame["customer_id"] = ids
    keep = ["customer_id", "churn_probability", "value_mean", "value_p10", "value_p50"]
    keep += ["value_p90", "abc_tier", "rfm_segment"]
    keep += [c for c in frame.columns if c.startswith("uplift_")]
    frame = frame[keep].assign(run_id="sr-one")
    db = raw(con)
    db.register("frame", frame)
    db.execute(f"CREATE TABLE {SCORES} AS SELECT * FROM frame")
    db.unregister("frame")
    db.execute(RUNS_DDL)
    db.execute(
        f"INSERT INTO {RUNS} VALUES (?, ?, ?, ?, 1.0, '1', '1', '1', 'fs', 'cv', ?, '{{}}')",
        ["sr-one", NOW, NOW, n, json.dumps(CATALOG.model_dump(mode="json"))],
    )
    con.disconnect()
    return ids


def test_one_path_from_a_warehouse_file_to_the_audit_tables(tmp_path: Path) -> None:
    """``make_list`` over a warehouse path (as the service reads it): fresh consent from
    the customers table and the warehouse's suppressions apply, the file is released
    once read, a preview writes nothing, and with ``AuditTables`` the export and the
    audit row agree."""
    path = tmp_path / "warehouse.duckdb"
    ids = scored_warehouse(path)
    con = connect(path)
    add_suppressions(con, ids[:3])
    raw(con).execute("UPDATE customers SET email_opt_in = false WHERE customer_id = ?", [ids[3]])
    con.disconnect()
    spec = default_spec()
    definition = TargetDefinition(action="cross_sell", name="t")
    source = WarehouseLists(path)
    preview = make_list(source, definition, spec, NOW, control=NO_CONTROL, suppress=[ids[4]])
    chosen = set(preview.selection.members.customer_id)
    assert preview.run.run_id == "sr-one" and preview.output is None
    assert not chosen & set(ids[:5]) and preview.selection.removed["suppressed"] == 4
    assert preview.selection.removed["no consent"] == 1
    assert preview.selection.basis == BASIS_UPLIFT and preview.selection.count > 0
    con = connect(path)  # read-write: only possible once the source let go of the file
    assert "target_lists" not in {r[0] for r in raw(con).execute("SHOW TABLES").fetchall()}
    out = tmp_path / "exports" / "t.csv"
    kept = make_list(
        WarehouseLists(con),
        definition,
        spec,
        NOW,
        control=NO_CONTROL,
        suppress=[ids[4]],
        sink=AuditTables(con, out),
    )
    assert kept.output == out and kept.list_id != preview.list_id
    pd.testing.assert_frame_equal(kept.selection.members, preview.selection.members)
    written = pd.read_csv(out, dtype={"customer_id": str})
    row, members = audit_rows(raw(con), kept.list_id)
    assert row["output"] == str(out) and row["run_id"] == "sr-one"
    assert row["customers"] == len(written) == kept.selection.count
    assert [m[1] for m in members] == written.customer_id.tolist()
    con.disconnect()


def test_one_path_checks_the_definition_before_the_warehouse(tmp_path: Path) -> None:
    """A bad filter is the caller's mistake (HTTP 422) even when the warehouse is
    missing (503): it is reported before anything is read."""
    missing = WarehouseLists(tmp_path / "none.duckdb")
    spec = default_spec()
    with pytest.raises(ExpressionError, match="unknown field 'churn_prob'"):
        make_list(
            missing, TargetDefinition(filter="churn_prob > 0.5"), spec, NOW, control=NO_CONTROL
        )
    with pytest.raises(WarehouseUnavailableError, match="no warehouse"):
        make_list(missing, TargetDefinition(), spec, NOW, control=NO_CONTROL)
    assert not (tmp_path / "none.duckdb").exists()


def test_saved_definitions_lookup(tmp_path: Path) -> None:
    """Packaged lists, then the workspace's file, then an extra file; options on top."""
    workspace, extra = tmp_path / "target_lists.yaml", tmp_path / "more.yaml"
    assert definition_texts(workspace) == []
    workspace.write_text("lists:\n  at_risk_high_value: {action: cross_sell, top: 5}\n")
    extra.write_text("lists:\n  mine: {filter: \"abc_tier == 'A'\"}\n")
    saved = saved_definitions(definition_texts(workspace, extra))
    assert saved["at_risk_high_value"].top == 5 and saved["mine"].filter == "abc_tier == 'A'"
    assert "winback_lapsed" in saved
    assert lookup("mine", {"top": 3, "budget": None}, saved).top == 3
    assert lookup(None, {"action": "cross_sell"}, saved).name is None
    with pytest.raises(TargetError, match="no saved list 'nope'"):
        lookup("nope", {}, saved)
    with pytest.raises(FileNotFoundError):
        definition_texts(workspace, tmp_path / "absent.yaml")
    workspace.write_text("lists: [")
    with pytest.raises(TargetError, match=r"^target_lists.yaml: not valid YAML"):
        saved_definitions(definition_texts(workspace, hide_paths=True))
