"""The web page's pieces without a browser: saved definitions round-trip to what
``rapport targets --list`` reads, the builder form's errors, the sign-in rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.tables.lists import TargetError, definition_texts, save_definition
from models.targeting import saved_definitions
from serving.auth import add_key
from ui.app import definition_of
from ui.session import Sessions, SignInError


def test_a_saved_definition_is_what_rapport_targets_reads(tmp_path: Path) -> None:
    path = tmp_path / "target_lists.yaml"
    path.write_text("lists:\n  mine:\n    filter: abc_tier == 'A'\n    top: 5\n")
    form = {"filter": "churn_probability > 0.5", "budget": "1,500", "profitable_only": "on"}
    definition = definition_of(form, "spring")
    save_definition(path, "spring", definition.model_dump(exclude_none=True, exclude={"name"}))
    saved = saved_definitions(definition_texts(path))
    assert saved["spring"] == definition and saved["spring"].budget == 1500
    assert saved["mine"].top == 5  # other lists are kept
    with pytest.raises(TargetError, match="list name"):
        save_definition(path, "../evil", {})


def test_the_builder_form_names_the_bad_field() -> None:
    with pytest.raises(TargetError, match="Budget must be a number"):
        definition_of({"budget": "lots"})
    with pytest.raises(TargetError, match="Top N must be a whole number"):
        definition_of({"top": "2.5"})
    assert definition_of({"filter": "  ", "action": ""}).filter is None


def test_sign_in_needs_a_ui_or_targets_key(tmp_path: Path) -> None:
    sessions = Sessions(None, tmp_path, seconds=60)
    ui_key, targets_key = add_key(tmp_path, ["ui"]), add_key(tmp_path, ["targets"])
    admin, score = add_key(tmp_path, ["admin"]), add_key(tmp_path, ["score"])
    for key in (ui_key, targets_key, admin):
        session = sessions.sign_in(key)
        assert sessions.get(session.sid) is session and len(session.csrf) >= 32
    for key, why in ((score, "scope"), ("rk_unknown", "not known"), ("", "not known")):
        with pytest.raises(SignInError, match=why):
            sessions.sign_in(key)
    session = sessions.sign_in(ui_key)
    sessions.sign_out(session.sid)
    assert sessions.get(session.sid) is None
    short = Sessions(None, tmp_path, seconds=-1)  # expired as soon as made
    assert short.get(short.sign_in(ui_key).sid) is None


def test_preview_cache_serves_stale_values_while_one_read_renews_them() -> None:
    import threading
    import time

    from ui.data import PreviewCache

    cache = PreviewCache(ttl=0.2, max_age=5.0)
    reads: list[int] = []
    release = threading.Event()

    def read() -> int:
        reads.append(1)
        if len(reads) > 1:
            release.wait(5)  # the refresh is slow
        return len(reads)

    assert cache.get(("k",), read) == 1
    assert cache.get(("k",), read) == 1 and len(reads) == 1  # fresh
    time.sleep(0.3)
    assert cache.get(("k",), read) == 1  # stale: served, one refresh started
    assert cache.get(("k",), read) == 1 and len(reads) == 2  # no second refresh
    release.set()
    deadline = time.monotonic() + 5
    while cache.peek(("k",)) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.get(("k",), read) == 2 and len(reads) == 2


def test_control_memo_gives_the_hash_s_answers() -> None:
    from features.control import ControlGroup
    from ui.data import ControlMemo, MemoControl

    group = ControlGroup(0.2, "salt")
    memo = ControlMemo()
    ids = [f"C{i:05d}" for i in range(3000)]
    first = MemoControl.of(group, memo).mask(ids)
    assert (first == group.mask(ids)).all() and 0.1 < first.mean() < 0.3
    again = MemoControl.of(group, memo).mask([*ids[::-1], "new"])  # known, and one new
    assert (again == group.mask([*ids[::-1], "new"])).all()
    other = ControlGroup(0.2, "other salt")  # another salt: hashed again
    assert (MemoControl.of(other, memo).mask(ids) == other.mask(ids)).all()


def test_a_writer_waits_for_the_readers_of_the_page() -> None:
    import threading
    import time

    from ui.data import WarehouseLock

    lock = WarehouseLock()
    order: list[str] = []
    with lock.read(), lock.read():  # readers together, even nested
        writer = threading.Thread(target=lambda: _write(lock, order))
        writer.start()
        time.sleep(0.2)
        order.append("read done")
    writer.join(5)
    assert order == ["read done", "wrote"]
    with lock.read(), pytest.raises(Exception, match="still reading"), lock.write(timeout=0.1):
        pass


def _write(lock: object, order: list[str]) -> None:
    with lock.write():  # type: ignore[attr-defined]
        order.append("wrote")


def test_a_writer_interrupts_a_yielding_read_and_later_ones_are_refused() -> None:
    import threading
    import time

    from features.tables.lists import WarehouseUnavailableError
    from ui.data import WarehouseLock

    lock = WarehouseLock()
    interrupted = threading.Event()
    wrote = threading.Event()

    def background_read() -> None:  # a refresh that stops when interrupted
        with lock.read(), lock.yielding(interrupted.set):
            interrupted.wait(5)

    reader = threading.Thread(target=background_read)
    reader.start()
    time.sleep(0.1)
    with lock.write(timeout=5):  # interrupts the read instead of waiting 5 s for it
        assert interrupted.is_set()
        wrote.set()
    reader.join(5)
    assert wrote.is_set()
    with lock.read():  # a writer waits for this read: no background read may start
        writer = threading.Thread(target=lambda: lock.write(timeout=5).__enter__())
        writer.start()
        time.sleep(0.1)
        with pytest.raises(WarehouseUnavailableError, match="save is waiting"):
            lock.yielding(lambda: None).__enter__()
    writer.join(5)


def test_feature_columns_are_the_built_features_aligned_with_the_scores(tmp_path: Path) -> None:
    """The columns the page keeps equal a full build (every attribute, sorted) joined
    to the scores' rows, customers without features left null."""
    import time
    from datetime import UTC, datetime

    import numpy as np
    import pandas as pd
    from sample_data import load_tables, random_tables

    from features.batch import build
    from features.spec import default_spec
    from features.tables.scores import RunInfo
    from features.warehouse import connect
    from models.targeting import feature_subset
    from ui.data import FeatureColumns, RunScores

    path = tmp_path / "warehouse.duckdb"
    con = connect(path)
    load_tables(con, random_tables(seed=3, customers=80, events=600))
    con.disconnect()
    spec = default_spec()
    names = ["spend_90d", "orders_30d", "region", "avg_order_value_365d", "email_opt_in"]
    ids = [f"C{i:04d}" for i in range(80)]
    rng = np.random.default_rng(0)
    order = [*rng.permutation(ids).tolist(), "nobody"]  # scores in their own order
    frame = pd.DataFrame({"customer_id": order})
    scores = RunScores(frame, pd.Index(frame["customer_id"].to_numpy(dtype=object)))
    now = datetime.now(UTC)
    run = RunInfo("sr-x", now, now, len(order), {}, "fs", {})
    columns = FeatureColumns(spec, path)
    got = columns.read(run, scores, names)
    con = connect(path, read_only=True)
    expected = frame.merge(
        build(con, got["spend_90d"].as_of, feature_subset(spec, names)).astype(
            {"customer_id": str}
        ),
        on="customer_id",
        how="left",
    )
    con.disconnect()
    for name in names:
        pd.testing.assert_series_equal(
            pd.Series(got[name].values, name=name), expected[name], check_dtype=False
        )
    assert pd.isna(got["spend_90d"].values[-1]) and expected["spend_90d"].notna().sum() > 40
    assert columns.get(run, "region") is got["region"]
    assert columns.columns(run, scores, ["region"])["region"] is got["region"]  # kept
    columns.ttl = 0.0  # stale: served, and computed again behind the request
    assert columns.columns(run, scores, ["region"])["region"] is got["region"]
    deadline = time.monotonic() + 30
    while columns.get(run, "region") is got["region"] and time.monotonic() < deadline:
        time.sleep(0.05)
    renewed = columns.get(run, "region")
    assert renewed is not None and renewed is not got["region"]
    assert renewed.as_of > got["region"].as_of
    assert pd.Series(renewed.values).equals(pd.Series(got["region"].values))


def test_a_preview_takes_a_column_not_read_yet_from_the_run_s_snapshot(tmp_path: Path) -> None:
    """A column never read comes from the scoring run's published features at once
    (marked, as of the run) while the background reader computes the fresh one, which
    then replaces it; a save (``fresh``) never gets the snapshot's."""
    import time
    from datetime import UTC, datetime, timedelta

    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sample_data import load_tables, random_tables

    from features.spec import default_spec
    from features.tables.scores import RunInfo
    from features.tables.snapshots import FEATURES_FILE, RUN_FILE, _run_json
    from features.warehouse import connect
    from ui.data import FeatureColumns, RunScores

    path = tmp_path / "warehouse.duckdb"
    con = connect(path)
    load_tables(con, random_tables(seed=3, customers=80, events=600))
    con.disconnect()
    ids = [f"C{i:04d}" for i in range(80)]
    frame = pd.DataFrame({"customer_id": [*ids[::-1], "nobody"]})
    scores = RunScores(frame, pd.Index(frame["customer_id"].to_numpy(dtype=object)))
    then = datetime.now(UTC) - timedelta(days=1)
    run = RunInfo("sr-snap", then, then, len(frame), {}, "fs", {})
    folder = tmp_path / "snapshots"
    (folder / run.run_id).mkdir(parents=True)
    (folder / run.run_id / RUN_FILE).write_text(_run_json(run))
    published = pd.DataFrame({"customer_id": ids, "spend_90d": -np.arange(80.0)})
    pq.write_table(pa.Table.from_pandas(published), folder / run.run_id / FEATURES_FILE)

    columns = FeatureColumns(default_spec(), path, snapshots=folder)
    got = columns.columns(run, scores, ["spend_90d"])["spend_90d"]
    assert got.snapshot and got.as_of == then
    assert got.values[0] == -79.0 and got.values[79] == 0.0 and np.isnan(got.values[80])
    deadline = time.monotonic() + 60
    while columns.reading() and time.monotonic() < deadline:
        time.sleep(0.05)
    fresh = columns.columns(run, scores, ["spend_90d"])["spend_90d"]
    assert not fresh.snapshot and fresh.as_of > then
    assert np.nanmin(fresh.values) >= 0  # computed over the orders, not the snapshot's
    # a column the snapshot lacks (another spec) is read at once; a save reads fresh ones
    saved = columns.columns(run, scores, ["orders_30d"], fresh=True)["orders_30d"]
    assert not saved.snapshot
    assert columns.published(run, scores, ["orders_30d"]) is None


def test_the_control_memo_takes_a_run_s_members_instead_of_hashing() -> None:
    """Seeded with who a run held out (its ``group``), the memo answers for those ids
    without hashing; a new salt hashes again."""
    import numpy as np
    import pandas as pd

    from features.control import ControlGroup
    from ui.data import ControlMemo

    ids = pd.Index([f"C{i:05d}" for i in range(2000)], dtype=object)
    group = ControlGroup(0.2, "salt-a")
    memo = ControlMemo()
    memo.seed(group, ids, group.mask(ids))
    assert (memo.mask(group, ids) == group.mask(ids)).all()
    fake = np.zeros(len(ids), dtype=bool)
    memo.seed(group, ids, fake)  # the same index object: kept, not replaced
    assert memo.mask(group, ids).sum() == group.mask(ids).sum() > 0
    other = ControlGroup(0.2, "salt-b")
    assert (memo.mask(other, ids) == other.mask(ids)).all()


def test_column_reads_go_by_table_and_keep_the_parts_they_finished(tmp_path: Path) -> None:
    """A read is one query per table (attributes first, a derived feature with its
    inputs' table); a read that fails half-way (a save interrupting it) keeps the parts it
    finished, so the next read computes only the rest."""
    from datetime import UTC, datetime

    import pandas as pd
    from sample_data import load_tables, random_tables

    from features.spec import default_spec
    from features.tables.scores import RunInfo
    from features.warehouse import connect
    from ui.data import FeatureColumns, RunScores, read_parts

    spec = default_spec()
    names = ["spend_90d", "email_opt_in", "complaints_90d", "avg_order_value_365d", "region"]
    parts = read_parts(spec, names)
    assert parts[0] == ["email_opt_in", "region"]
    assert ["spend_90d", "avg_order_value_365d"] in parts and ["complaints_90d"] in parts

    path = tmp_path / "warehouse.duckdb"
    con = connect(path)
    load_tables(con, random_tables(seed=4, customers=60, events=400))
    con.disconnect()
    frame = pd.DataFrame({"customer_id": [f"C{i:04d}" for i in range(60)]})
    scores = RunScores(frame, pd.Index(frame["customer_id"].to_numpy(dtype=object)))
    now = datetime.now(UTC)
    run = RunInfo("sr-parts", now, now, len(frame), {}, "fs", {})

    class Interrupted(FeatureColumns):
        """Its read of the orders' part fails, as one a save interrupts."""

        def _read_part(self, run, scores, names, yielding):  # type: ignore[no-untyped-def]
            if "spend_90d" in names:
                raise RuntimeError("INTERRUPT: a save came")
            return super()._read_part(run, scores, names, yielding)

    columns = Interrupted(spec, path)
    with pytest.raises(RuntimeError, match="INTERRUPT"):
        columns.read(run, scores, names)
    kept = {n for n in names if columns.get(run, n) is not None}
    assert {"email_opt_in", "region"} <= kept and "spend_90d" not in kept
    assert "avg_order_value_365d" not in kept
    whole = FeatureColumns(spec, path).read(run, scores, names)
    for name in kept:  # the parts kept are what a whole read computes
        assert pd.Series(columns.get(run, name).values).equals(pd.Series(whole[name].values))  # type: ignore[union-attr]


def test_sign_ins_wait_for_the_start_up_read(tmp_path: Path) -> None:
    """Until the page has read what every preview needs, ``/readyz`` says 503 and the
    sign-in page says it is loading; a sign-in with a good key waits for the read (a bad
    key is refused at once) and then gets its session."""
    import re
    import threading

    from starlette.testclient import TestClient

    from rapport.settings import Settings
    from ui.app import create_app

    key = add_key(tmp_path, ["ui"])
    app = create_app(Settings(home=tmp_path))
    ui = app.state.ui
    assert ui.ready.wait(30)  # no warehouse here: ready at once, the pages say what to run
    ui.ready.clear()  # as while a million scores are read
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        form = client.get("/signin")
        assert 'id="loading"' in form.text
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        wrong = client.post("/signin", data={"key": "rk_nope", "csrf": token})
        assert wrong.status_code == 401
        answers: list[int] = []
        signing_in = threading.Thread(
            target=lambda: answers.append(
                client.post(
                    "/signin", data={"key": key, "csrf": token}, follow_redirects=False
                ).status_code
            )
        )
        signing_in.start()
        signing_in.join(1.0)
        assert signing_in.is_alive() and not answers  # waits for the start-up read
        ui.ready.set()
        signing_in.join(30)
        assert answers == [303]
        assert client.get("/readyz").status_code == 200
