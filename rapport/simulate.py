"""``rapport simulate``: the demo's customers answer the decisions that were actually made.

Part of the simulator (with :mod:`rapport.demo_data`): it reads the ground truth
(``truth_actions``, through :func:`rapport.truth.load_truth_actions`) and plays, for every
decision made, the customer's response the truth says: converted with the true probability
of the action taken (``no_action`` and control decisions: the control probability), for
an order worth the true expected revenue per conversion (Gamma noise, mean 1), at a time
uniform over the demo's response window after the decision.

Decisions played: the warehouse's campaign log, the service's outbox decisions not yet
ingested, and the members of the target lists recorded in the warehouse (the campaign
tool executes a list: its contacts become campaign-log rows, ``tl-<list>-<customer>``).

Every draw is fixed by ``(seed, decision_id)``, so the responses do not depend on when or
how often the simulator runs: a run up to ``as_of`` writes the events that happened by
then; a later run writes the same ones plus those that happened since (ingest keeps one
copy). Outcomes are written when known: a conversion once it happened, a non-conversion
once the window closed.

Output, under ``<home>/simulate/<period>/``: ``orders.csv``, ``interactions.csv`` (one
outbound contact per treated decision), ``outcomes.csv`` and, for target-list contacts,
``campaign_log.csv`` -- contract files for ``rapport ingest <folder>``; and beside them
``truth_<period>.json``: the true (expected) incremental value of the decisions made in
the period, which only :func:`rapport.truth.load_simulated_truth` reads.

Assumption: customers respond as the truth at its cutoff says (their situation frozen at
the demo's end); customers the truth does not know (signed up later) are skipped and
counted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import NO_ACTION
from features.timeutil import as_utc
from features.warehouse import raw, table_names
from rapport.demo_data import RESPONSE_WINDOW_DAYS
from rapport.truth import load_truth_actions, simulated_truth_path

#: Gamma shape of an order's value around the true expected value per conversion
VALUE_SHAPE = 4.0
CONTACT_CHANNELS = {"email": "email", "call": "call", "sms": "sms"}


@dataclass
class Simulated:
    """What one run wrote."""

    folder: Path
    truth_path: Path
    decisions: int
    skipped: int
    orders: int
    outcomes: int
    contacts: int

    def summary(self) -> str:
        return (
            f"simulated {self.decisions:,} decisions ({self.skipped:,} of customers unknown to "
            f"the simulator skipped): {self.orders:,} orders, {self.outcomes:,} outcomes, "
            f"{self.contacts:,} contacts\n  files: {self.folder} (load with `rapport ingest "
            f"{self.folder}`)\n  true value of the period: {self.truth_path}"
        )


def _draws(seed: int, decision_ids: pd.Series) -> np.ndarray:
    """Three uniforms per decision, fixed by (seed, decision id)."""
    out = np.empty((len(decision_ids), 3))
    for i, decision_id in enumerate(decision_ids.astype(str)):
        digest = hashlib.sha256(f"{seed}:{decision_id}".encode()).digest()
        out[i] = np.random.default_rng(int.from_bytes(digest[:8], "little")).random(3)
    return out


def _outbox_decisions(outbox: Path) -> pd.DataFrame:
    folder = outbox / "campaign_log"
    paths = [*folder.glob("*.jsonl"), *folder.glob("*.jsonl.open")] if folder.is_dir() else []
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line]
    return pd.DataFrame(rows)


def _list_decisions(db: Any) -> pd.DataFrame:
    tables = table_names(db)
    if not {"target_lists", "target_list_members"} <= tables:
        return pd.DataFrame()
    return db.execute("""
        SELECT 'tl-' || l.list_id || '-' || m.customer_id AS decision_id, m.customer_id,
               l.created_at AS decided_at, m.action, m.channel
        FROM target_list_members m JOIN target_lists l USING (list_id)
    """).df()


def decisions_made(con: Any, outbox: Path) -> pd.DataFrame:
    """Every decision made: warehouse campaign log, outbox, target-list contacts
    (``from_list`` marks those, which the campaign log does not hold yet)."""
    db = raw(con)
    cols = {r[0] for r in db.execute("DESCRIBE campaign_log").fetchall()}
    group = '"group"' if "group" in cols else 'NULL::VARCHAR AS "group"'
    stored = db.execute(
        f"SELECT decision_id, customer_id, decided_at, action, channel, {group} FROM campaign_log"
    ).df()
    parts = [stored.assign(from_list=False)]
    pending = _outbox_decisions(outbox)
    if len(pending):
        pending = pending.reindex(columns=[*stored.columns])
        parts.append(pending.assign(from_list=False))
    listed = _list_decisions(db)
    if len(listed):
        parts.append(listed.assign(group=None, from_list=True))
    frame = pd.concat([p for p in parts if len(p)], ignore_index=True)
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True, format="ISO8601")
    return frame.drop_duplicates("decision_id").reset_index(drop=True)


def simulate(
    con: Any,
    home: Path,
    outbox: Path,
    days: int,
    as_of: datetime,
    seed: int = 0,
    only: Collection[str] | None = None,
) -> Simulated:
    """Play the responses to the decisions whose window overlaps the ``days`` before
    ``as_of``; write the files and the period's truth (module docstring). ``only``: play
    just these decision ids (the demo's own campaign, so its truth covers what it
    measures and nothing a served service or an older list decided)."""
    if days < 1:
        raise ValueError(f"--days must be at least 1, got {days}")
    end = as_utc(as_of)
    start = end - timedelta(days=days)
    truth = load_truth_actions(con)
    if truth is None:
        raise LookupError(
            "no simulator ground truth in the warehouse: `rapport simulate` plays the demo's "
            "customers, run `rapport demo` first"
        )
    window = timedelta(days=RESPONSE_WINDOW_DAYS)
    made = decisions_made(con, outbox)
    made = made[(made["decided_at"] >= start - window) & (made["decided_at"] < end)]
    if only is not None:
        made = made[made["decision_id"].astype(str).isin(set(only))]
    truth = truth.assign(customer_id=truth["customer_id"].astype(str))
    control = made["action"].eq(NO_ACTION) | made["group"].eq("control")
    played = made.assign(
        customer_id=made["customer_id"].astype(str),
        truth_action=np.where(control, NO_ACTION, made["action"].astype(str)),
    ).merge(
        truth[["customer_id", "action", *_TRUTH_COLUMNS]].rename(
            columns={"action": "truth_action"}
        ),
        on=["customer_id", "truth_action"],
        how="inner",
    )
    skipped = len(made) - len(played)
    played = played.sort_values("decision_id").reset_index(drop=True)
    u = _draws(seed, played["decision_id"])
    p_treated = played["p_convert_treated"].to_numpy()
    converted = u[:, 0] < p_treated
    per_conversion = played["expected_revenue_treated"].to_numpy() / np.maximum(p_treated, 1e-9)
    noise = _gamma(u[:, 1])
    played["converted"] = converted
    played["order_value"] = np.round(per_conversion * noise, 2)
    played["responded_at"] = played["decided_at"] + pd.to_timedelta(
        u[:, 2] * RESPONSE_WINDOW_DAYS, unit="D"
    )
    played["window_closed"] = played["decided_at"] + window <= end
    folder = home / "simulate" / f"{start:%Y%m%d}-{end:%Y%m%d}"
    folder.mkdir(parents=True, exist_ok=True)
    orders = played[converted & (played["responded_at"] >= start) & (played["responded_at"] < end)]
    pd.DataFrame(
        {
            "order_id": "so-" + orders["decision_id"],
            "customer_id": orders["customer_id"],
            "ordered_at": orders["responded_at"],
            "amount": orders["order_value"],
            "channel": "web",
        }
    ).to_csv(folder / "orders.csv", index=False)
    known = played[(played["converted"] & (played["responded_at"] < end)) | played["window_closed"]]
    pd.DataFrame(
        {
            "decision_id": known["decision_id"],
            "outcome": known["converted"] & (known["responded_at"] < end),
            "revenue": np.where(known["converted"], known["order_value"], 0.0),
            "responded_at": known["responded_at"].where(known["converted"]),
        }
    ).to_csv(folder / "outcomes.csv", index=False)
    treated = played[
        ~played["truth_action"].eq(NO_ACTION)
        & played["channel"].isin(list(CONTACT_CHANNELS))
        & (played["decided_at"] >= start)
    ]
    pd.DataFrame(
        {
            "interaction_id": "si-" + treated["decision_id"],
            "customer_id": treated["customer_id"],
            "occurred_at": treated["decided_at"],
            "channel": treated["channel"].map(CONTACT_CHANNELS),
            "kind": "sent",
            "direction": "outbound",
        }
    ).to_csv(folder / "interactions.csv", index=False)
    listed = played[played["from_list"]]
    if len(listed):
        pd.DataFrame(
            {
                "decision_id": listed["decision_id"],
                "customer_id": listed["customer_id"],
                "decided_at": listed["decided_at"],
                "action": listed["action"],
                "channel": listed["channel"],
            }
        ).to_csv(folder / "campaign_log.csv", index=False)
    in_period = played[played["decided_at"] >= start]
    truth_path = simulated_truth_path(home, start, end)
    truth_path.write_text(json.dumps(_period_truth(in_period, start, end, seed, skipped), indent=2))
    return Simulated(
        folder, truth_path, len(played), skipped, len(orders), len(known), len(treated)
    )


_TRUTH_COLUMNS = (
    "p_convert_treated",
    "p_convert_control",
    "expected_revenue_treated",
    "expected_revenue_control",
)


def _gamma(u: np.ndarray) -> np.ndarray:
    """Gamma(VALUE_SHAPE, 1/VALUE_SHAPE) quantiles of ``u`` (mean 1)."""
    from scipy.stats import gamma

    return np.asarray(gamma.ppf(np.clip(u, 1e-9, 1 - 1e-9), VALUE_SHAPE, scale=1 / VALUE_SHAPE))


def _period_truth(
    played: pd.DataFrame, start: datetime, end: datetime, seed: int, skipped: int
) -> dict[str, Any]:
    """The true (expected) incremental value of the decisions made in the period: per
    decision, the expected revenue of what was done minus that of doing nothing."""
    incremental_conversion = played["p_convert_treated"] - played["p_convert_control"]
    incremental_revenue = played["expected_revenue_treated"] - played["expected_revenue_control"]
    frame = played.assign(
        incremental_conversion=incremental_conversion, incremental_revenue=incremental_revenue
    )
    groups = frame["group"].fillna("logged")
    by_action = {
        str(action): {
            "decisions": len(rows),
            "true_conversion": float(rows["p_convert_treated"].mean()),
            "true_incremental_conversion": float(rows["incremental_conversion"].mean()),
            "true_incremental_revenue_per_decision": float(rows["incremental_revenue"].mean()),
            "true_incremental_revenue": float(rows["incremental_revenue"].sum()),
        }
        for action, rows in frame.groupby("action")
    }
    by_group = {
        str(group): {
            "decisions": len(rows),
            "customers": int(rows["customer_id"].nunique()),
            "true_conversion": float(rows["p_convert_treated"].mean()),
            "true_revenue_per_decision": float(rows["expected_revenue_treated"].mean()),
        }
        for group, rows in frame.groupby(groups)
    }
    return {
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "seed": seed,
        "decisions": len(frame),
        "skipped_unknown_customers": skipped,
        "true_incremental_revenue": float(incremental_revenue.sum()),
        "true_incremental_conversions": float(incremental_conversion.sum()),
        "by_action": by_action,
        "by_group": by_group,
    }
