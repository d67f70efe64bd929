"""``rapport resolve`` on a small demo: generate -> ingest -> resolve, the linkage judged
against the simulator's truth (pairwise precision, recall, F1; target F1 >= 0.95), the
result recorded (links with evidence, clusters, changes) and no identifier in the output."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from features.identity import links_alone, normalise
from features.resolve import clusters_of, exact_links, resolve
from features.warehouse import connect, raw
from models.metrics import linkage_metrics
from rapport.cli import main
from rapport.demo_data import DemoData, generate, write
from rapport.truth import compare_identity, ingest_demo

END = datetime(2025, 1, 1, tzinfo=UTC)


def test_linkage_metrics_count_pairs() -> None:
    truth = pd.Series(["p1", "p1", "p1", "p2", "p3"], index=list("abcde"))
    # a, b together (right), c alone (missed two pairs), d, e together (wrong)
    pred = pd.Series(["a", "a", "c", "d", "d"], index=list("abcde"))
    m = linkage_metrics(pred, truth)
    assert (m["linked_pairs"], m["true_pairs"]) == (2, 3)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(1 / 3)
    assert linkage_metrics(truth, truth)["f1"] == 1.0


def test_exact_links_join_shared_values_transitively() -> None:
    ids = pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c3", "c4"],
            "email": ["a@x.io", "a@x.io", None, None],
            "phone": [None, "+447911123456", "+447911123456", None],
            "loyalty_card": [None, None, None, None],
            "cookie_id": ["k", None, None, "k"],  # a shared cookie alone links nobody
        }
    )
    links = exact_links(ids)
    assert set(links["rule"]) == {"exact:email", "exact:phone"}
    clusters = clusters_of(ids["customer_id"], links)
    assert clusters.to_dict() == {"c1": "c1", "c2": "c1", "c3": "c1", "c4": "c4"}


def test_a_shared_landline_links_nobody() -> None:
    ids = pd.DataFrame(
        {
            "customer_id": ["h1", "h2", "m1", "m2"],
            "email": ["jo@x.io", "sam@x.io", None, None],
            "phone": ["+442079460123", "+442079460123", "+447911123456", "+447911123456"],
            "loyalty_card": [None] * 4,
            "cookie_id": [None] * 4,
        }
    )
    links = exact_links(ids)
    assert list(zip(links["customer_id"], links["other_customer_id"], strict=True)) == [
        ("m1", "m2")
    ]


def test_a_name_with_postcode_links_unless_its_records_disagree() -> None:
    landline = "+442079460123"
    ids = pd.DataFrame(
        {
            # p1, p2: one person who changed e-mail, only the household's landline shared
            # f1, f2: a father and son of one name at one address (two mobiles)
            # h1, h2: a household: one postcode, one family name, two first names
            "customer_id": ["p1", "p2", "f1", "f2", "h1", "h2"],
            "email": ["jo@x.io", "jl@y.io", None, None, "a@x.io", "b@x.io"],
            "phone": [landline, landline, "+447911123456", "+447911654321", None, None],
            "loyalty_card": [None] * 6,
            "cookie_id": [None] * 6,
            "name_postcode": [
                "jo lee|SW1A1AA",
                "jo lee|SW1A1AA",
                "sam hill|N19GU",
                "sam hill|N19GU",
                "ann ward|E16AN",
                "tom ward|E16AN",
            ],
        }
    )
    links = exact_links(ids)
    assert links[["customer_id", "other_customer_id", "rule"]].values.tolist() == [
        ["p1", "p2", "exact:name_postcode"]
    ]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, DemoData]:
    folder = tmp_path_factory.mktemp("identity")
    data = generate(2500, seed=11, end=END, years=1.0)
    files = write(data, folder / "files")["customers"].parent
    con = connect(folder / "warehouse.duckdb")
    ingest_demo(con, files, now=END)
    return con, data


def test_demo_has_identifiers_and_duplicates_with_their_truth(demo: tuple) -> None:
    _, data = demo
    truth = data.truth_identity
    assert list(truth["customer_id"]) == list(data.customers["customer_id"])
    seconds = truth[truth["how"] != "original"]
    assert 0.03 < len(seconds) / len(truth) < 0.1
    assert set(seconds["how"]) == {"typo", "changed_email", "second_cookie", "card"}
    assert data.customers["email"].notna().mean() > 0.8
    # households: different persons giving the same (landline) phone
    shared = _household_pairs(data)
    assert len(shared) > 50


def _household_pairs(data: DemoData) -> pd.DataFrame:
    """Pairs of records of different persons holding the same normalised phone."""
    phones = normalise(data.customers).frame[["customer_id", "phone"]].dropna()
    phones["person"] = phones["customer_id"].map(
        data.truth_identity.set_index("customer_id")["person_id"]
    )
    pairs = phones.merge(phones, on="phone", suffixes=("", "_other"))
    return pairs[
        (pairs["customer_id"] < pairs["customer_id_other"])
        & (pairs["person"] != pairs["person_other"])
    ]


def _changed_email_on_a_landline(data: DemoData) -> pd.DataFrame:
    """Pairs (original, second record) of one person who changed e-mail, sharing a
    landline as their only phone and the same name with postcode in normal form."""
    normal = normalise(data.customers).frame.set_index("customer_id")
    truth = data.truth_identity.set_index("customer_id")
    first = truth.reset_index().groupby("person_id")["customer_id"].first()
    second = truth[truth["how"] == "changed_email"]
    pairs = pd.DataFrame(
        {
            "customer_id": first[second["person_id"]].to_numpy(),
            "customer_id_other": second.index.to_numpy(),
        }
    )
    a, b = normal.loc[pairs["customer_id"]], normal.loc[pairs["customer_id_other"]]
    landline = ~links_alone("phone", a["phone"].fillna("")) & a["phone"].notna().to_numpy()
    same = (a["name_postcode"].to_numpy() == b["name_postcode"].to_numpy()) & a[
        "name_postcode"
    ].notna().to_numpy()
    shared = a["phone"].to_numpy() == b["phone"].to_numpy()
    return pairs[landline & same & shared]


def test_resolution_finds_the_persons_of_the_demo(demo: tuple) -> None:
    con, _ = demo
    report = resolve(con, END)
    assert report.exact_links > 0 and report.probabilistic_links > 0
    figures = compare_identity(con)
    assert figures is not None
    print(
        f"\nlinkage on the demo (2,500 records, seed 11): precision {figures['precision']:.3f}, "
        f"recall {figures['recall']:.3f}, F1 {figures['f1']:.3f} "
        f"({figures['linked_pairs']:.0f} linked pairs, {figures['true_pairs']:.0f} true)"
    )
    # with name and postcode (before them: precision 0.975, recall 0.940, F1 0.957)
    assert figures["f1"] >= 0.97
    assert figures["precision"] >= 0.97 and figures["recall"] >= 0.96
    # no two persons of a household merged because they share its phone
    clusters = (
        raw(con)
        .execute("SELECT customer_id, cluster_id FROM identity_clusters")
        .df()
        .set_index("customer_id")["cluster_id"]
    )
    shared = _household_pairs(demo[1])
    together = clusters[shared["customer_id"]].to_numpy() == (
        clusters[shared["customer_id_other"]].to_numpy()
    )
    assert len(shared) > 50 and not together.any()
    # a person who changed e-mail and whose only phone is the household's landline: the
    # name with postcode (the same, however written) joins their records
    changed = _changed_email_on_a_landline(demo[1])
    assert len(changed) >= 5
    joined = clusters[changed["customer_id"]].to_numpy() == (
        clusters[changed["customer_id_other"]].to_numpy()
    )
    assert joined.all()
    db = raw(con)
    links = db.execute("SELECT * FROM identity_links").df()
    assert links["resolved_at"].notna().all() and links["evidence"].notna().all()
    assert set(links["rule"]) >= {"splink", "exact:email", "exact:phone", "exact:name_postcode"}
    assert links["evidence"].str.contains("name").any()
    for column in ("email", "name", "postcode"):
        held = set(
            db.execute(f"SELECT {column} FROM customers WHERE {column} IS NOT NULL").df()[column]
        )
        assert held and not held & set(links["evidence"])
    (merged,) = db.execute(
        "SELECT count(*) FROM identity_changes WHERE change = 'merge'"
    ).fetchone() or (0,)
    assert merged == report.merges > 0
    # the same data again: nothing changes, so nothing new is recorded
    again = resolve(con, END + timedelta(days=1))
    assert (again.merges, again.splits) == (0, 0)


def test_cli_resolve_reports_without_identifiers(workspace: Path, tmp_path: Path) -> None:
    data = generate(300, seed=5, end=END, years=0.5)
    files = write(data, tmp_path / "files")["customers"].parent
    con = connect(workspace / "warehouse.duckdb")
    ingest_demo(con, files, now=END)
    con.disconnect()
    result = CliRunner().invoke(main, ["resolve", "--compare-truth"])
    assert result.exit_code == 0, result.output
    assert "precision" in result.output and "customers 300" in result.output
    for email in data.customers["email"].dropna():
        assert email.strip().lower() not in result.output.lower()


def test_forget_erases_the_customer_from_the_identity_tables(
    workspace: Path, tmp_path: Path
) -> None:
    data = generate(300, seed=5, end=END, years=0.5)
    files = write(data, tmp_path / "files")["customers"].parent
    con = connect(workspace / "warehouse.duckdb")
    ingest_demo(con, files, now=END)
    resolve(con, END)
    db = raw(con)
    (someone,) = db.execute(
        "SELECT other_customer_id FROM identity_links ORDER BY other_customer_id LIMIT 1"
    ).fetchone() or (None,)
    # and a customer whose id names a cluster of several records
    (named,) = db.execute(
        "SELECT cluster_id FROM identity_clusters WHERE cluster_id != ? "
        "GROUP BY cluster_id HAVING count(*) > 1 ORDER BY cluster_id LIMIT 1",
        [someone],
    ).fetchone() or (None,)
    assert named is not None
    members = db.execute(
        "SELECT customer_id FROM identity_clusters WHERE cluster_id = ? AND customer_id != ?",
        [named, named],
    ).df()["customer_id"]
    con.disconnect()
    for customer in (someone, named):
        result = CliRunner().invoke(main, ["forget", customer, "--yes"])
        assert result.exit_code == 0, result.output
    con = connect(workspace / "warehouse.duckdb")
    for table, column in (
        ("identity_links", "customer_id"),
        ("identity_links", "other_customer_id"),
        ("identity_clusters", "customer_id"),
        ("identity_clusters", "cluster_id"),
        ("identity_changes", "customer_id"),
        ("identity_changes", "cluster_id"),
        ("identity_changes", "old_cluster_id"),
    ):
        for customer in (someone, named):
            (n,) = raw(con).execute(
                f"SELECT count(*) FROM {table} WHERE {column} = ?", [customer]
            ).fetchone() or (0,)
            assert n == 0, (table, column)
    # the cluster's other records are still there, each standing alone until resolved again
    after = (
        raw(con)
        .execute(
            "SELECT customer_id, cluster_id FROM identity_clusters WHERE customer_id IN "
            "(SELECT unnest(?))",
            [list(members)],
        )
        .df()
    )
    assert len(after) == len(members) and (after["cluster_id"] == after["customer_id"]).all()
    con.disconnect()
