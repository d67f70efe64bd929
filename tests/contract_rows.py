"""Contract rows as tests write them: one builder per event table, so an order (or an
interaction) has one shape in every test and each test passes the values it asserts on.

``order`` and ``interaction`` give the table's required columns plus what is passed (a file
test passes strings, as a CSV holds them); ``live_order`` and ``live_interaction`` give
every column of the contract, as :func:`features.online.identifiers.route_events` hands
rows to :func:`features.online.events.apply_events`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from features.contract import INTERACTIONS, ORDERS


def _a_day_ago() -> datetime:
    return datetime.now(UTC) - timedelta(days=1)


def order(
    order_id: str | None,
    customer_id: str | None,
    ordered_at: Any = None,
    amount: Any = 12.5,
    **given: Any,
) -> dict[str, Any]:
    """An ``orders`` row: its id, customer, time (default: a day ago), amount, and
    ``given`` (optional columns, identifiers)."""
    at = _a_day_ago() if ordered_at is None else ordered_at
    row = {"order_id": order_id, "customer_id": customer_id, "ordered_at": at}
    return row | {"amount": amount} | given


def interaction(
    interaction_id: str,
    customer_id: str | None,
    occurred_at: Any,
    channel: str,
    kind: str,
    **given: Any,
) -> dict[str, Any]:
    """An ``interactions`` row: its id, customer, time, channel, kind, and ``given``
    (optional columns, identifiers)."""
    row = {"interaction_id": interaction_id, "customer_id": customer_id}
    return row | {"occurred_at": occurred_at, "channel": channel, "kind": kind} | given


def live_order(order_id: str, customer_id: str | None, *args: Any, **given: Any) -> dict[str, Any]:
    """:func:`order` with every column of the contract's ``orders`` (None unless given)."""
    return dict.fromkeys(ORDERS.column_names) | order(order_id, customer_id, *args, **given)


def live_interaction(
    interaction_id: str, customer_id: str | None, *args: Any, **given: Any
) -> dict[str, Any]:
    """:func:`interaction` with every column of the contract's ``interactions``."""
    row = interaction(interaction_id, customer_id, *args, **given)
    return dict.fromkeys(INTERACTIONS.column_names) | row
