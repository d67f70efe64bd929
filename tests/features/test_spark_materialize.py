"""``rapport materialize`` on Spark: the executors build every customer's record from the
lake and write it to Redis; the store ends up with the DuckDB path's records and
metadata (events in any order, as on DuckDB)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis_harness import RedisServer
from sample_data import cutoff, random_tables, write_lake

from features.batch import build
from features.lake import table_uri
from features.online.materialize import META_MATERIALIZED_AT, materialize
from features.online.record import record_columns
from features.online.store import REDIS_META_KEY, REDIS_RECORD_PREFIX, decode_record, open_store
from features.spec import default_spec
from features.tables.segments import snapshot_segments
from features.warehouse import connect, raw

pytestmark = pytest.mark.spark


def stored(server: RedisServer, db: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Every record of one Redis database (events sorted by id) and its metadata."""
    client = server.client()
    client.execute_command("SELECT", db)
    records = {}
    for key in client.scan_iter(match=REDIS_RECORD_PREFIX + "*"):
        record = decode_record(client.get(key))
        for table, columns in record_columns(default_spec()).items():
            events = record[table]
            order = sorted(range(len(events[columns[0]])), key=events[columns[0]].__getitem__)
            record[table] = {c: [events[c][i] for i in order] for c in columns}
        records[key.decode()] = record
    meta = {k.decode(): v.decode() for k, v in client.hgetall(REDIS_META_KEY).items()}
    client.close()
    return records, meta


@pytest.mark.slow  # ~30 s on two shared cores
def test_spark_materialize_writes_the_duckdb_records(
    spark: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    from features.spark import record_loader

    lake = tmp_path / "lake"
    tables = random_tables(21, customers=90, events=900)
    write_lake(tables, lake)
    duck = connect(tmp_path / "warehouse.duckdb")  # tables, not views: records_sql's cursors
    for name in tables:
        uri = f"{table_uri(str(lake), name)}/part-0.parquet"
        raw(duck).execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{uri}')")
    as_of = cutoff(400.0)
    snapshot_segments(
        raw(duck), build(duck, as_of), as_of, default_spec().version, datetime.now(UTC)
    )
    urls = [redis_server.url.rsplit("/", 1)[0] + f"/{db}" for db in (1, 2)]
    loaders = [None, record_loader(spark, str(lake), urls[1])]
    for url, load in zip(urls, loaders, strict=True):
        store = open_store(url)
        try:
            written = materialize(duck, store, as_of, load=load)
        finally:
            store.close()
        assert written > 20
    (expected, expected_meta), (got, got_meta) = stored(redis_server, 1), stored(redis_server, 2)
    assert len(got) == len(expected) == written
    assert got == expected
    for meta in (expected_meta, got_meta):
        meta.pop(META_MATERIALIZED_AT)
    assert got_meta == expected_meta


def test_spark_materialize_needs_redis(spark: Any, tmp_path: Path) -> None:
    from features.spark import record_loader

    with pytest.raises(ValueError, match="RAPPORT_ONLINE_STORE=redis://"):
        record_loader(spark, str(tmp_path), f"sqlite:///{tmp_path}/online.sqlite")
