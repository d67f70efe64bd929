"""``impact`` and ``impact_actions``: every ``rapport impact`` run appended (a time series).

``impact``: one row per run, period and breakdown key: treated vs control customers,
conversion, revenue, margin and value per customer, the incremental value per customer
with its 95% interval. ``impact_actions``: per run and action, the realised conversion
and revenue against the control decisions' and the predicted uplift. Both carry
``run_id`` and ``computed_at``; nothing is ever updated.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from features.warehouse import table_names

IMPACT, IMPACT_ACTIONS = "impact", "impact_actions"


def append(db: Any, table: str, frame: pd.DataFrame) -> int:
    """Append ``frame`` to ``table`` (created from the first frame; later columns added)."""
    if frame.empty:
        return 0
    data = pa.Table.from_pandas(frame, preserve_index=False)
    db.register("_rapport_impact", data)
    try:
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM _rapport_impact LIMIT 0")
        have = {r[0] for r in db.execute(f"DESCRIBE {table}").fetchall()}
        for name in data.column_names:
            if name not in have:
                kind = "DOUBLE" if pa.types.is_floating(data.schema.field(name).type) else "VARCHAR"
                db.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {kind}')
        db.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rapport_impact")
    finally:
        db.unregister("_rapport_impact")
    return len(frame)


def history(db: Any, table: str = IMPACT) -> pd.DataFrame:
    """Every appended row, oldest run first (empty before the first run)."""
    have = table_names(db)
    if table not in have:
        return pd.DataFrame()
    return db.execute(f"SELECT * FROM {table} ORDER BY computed_at").to_arrow_table().to_pandas()
