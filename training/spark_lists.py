"""``rapport targets`` on Spark: the filter and the policy in the executors, the exact
budget selection on the driver over a shortlist.

:func:`select_on_spark` is the ``select`` that :func:`models.targeting.make_list` takes
with :class:`features.spark.LakeLists` as its source (the run's scores in the lake joined
with the features the list reads, built on Spark as of the list's cutoff). It runs the
steps of :func:`models.targeting.select_targets` in the same order with the same code:

1. deduplication: the candidates are hash-partitioned by customer and a customer's
   second row is dropped (which row stays is arbitrary; a run has one per customer);
2. :func:`models.targeting.screen` on every batch in the executors -- suppression, the
   control group, the filter (the expression language evaluated on pandas batches, as on
   DuckDB), arbitration (eligibility, consent, contact policy, cool-down) and
   profitability; each batch's counts come back to the driver and are summed
   (:meth:`models.targeting.Screened.combine`);
3. the members stay in Spark; only a shortlist comes to the driver: with a budget, per
   action cost the :func:`models.targeting.budget_room` most valuable members (the exact
   knapsack never chooses beyond them), else with ``top`` the first ``top`` members in
   the list's order, else every member (the list itself);
4. :func:`models.targeting.choose` on the driver: the exact budget, sort, top N.

The members equal the DuckDB path's on the same data; a knapsack with two optimal
selections of exactly equal value may pick either.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from features import spark as on_spark
from features.control import ControlGroup
from models.catalog import Catalog
from models.targeting import (
    Screened,
    Selection,
    TargetDefinition,
    budget_room,
    check_definition,
    choose,
    screen,
)


def select_on_spark(
    frame: Any,
    catalog: Catalog,
    definition: TargetDefinition,
    suppressed: set[str],
    value_at_risk_fallback: bool,
    control: ControlGroup,
) -> Selection:
    """The list for ``definition`` from ``frame``, a Spark DataFrame of candidates
    (:meth:`features.spark.LakeLists.candidates`); arguments and result as
    :func:`models.targeting.select_targets`."""
    check_definition(definition, catalog, frame.columns)
    column, ascending = definition.sort_key()

    def screened(rows: pd.DataFrame) -> Screened:
        return screen(rows, catalog, definition, suppressed, value_at_risk_fallback, control)

    def batch(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
        part = screened(rows)
        return part.members, part.counts()

    nobody = screened(frame.limit(0).toPandas())  # the schema, and a part with no rows
    mapped = on_spark.map_summarized(frame, batch, nobody.members, unique="customer_id")
    try:
        members = mapped.rows
        if definition.budget is not None:
            room = budget_room(on_spark.distinct(members, "cost"), definition.budget)
            shortlist = on_spark.best_per_group(
                members, "cost", "expected_value", "customer_id", room
            )
        elif definition.top is not None:
            shortlist = on_spark.first_rows(
                members, column, ascending, "customer_id", definition.top
            )
        else:
            shortlist = members.toPandas()
    finally:
        mapped.close()
    # a fixed order for the knapsack's tie-break between equal values (by customer id)
    shortlist = shortlist.sort_values("customer_id", kind="stable", ignore_index=True)
    parts = [nobody.counts(), *mapped.summaries]
    total = Screened.combine(parts, shortlist.astype(nobody.members.dtypes.to_dict()))
    duplicates = sum(int(p.get("duplicates", 0)) for p in parts)
    total.removed = {"duplicates": duplicates, **total.removed}
    total.considered = sum(int(p.get("rows", 0)) for p in parts)
    return choose(total, definition)
