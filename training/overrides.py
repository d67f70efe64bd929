"""Champion changes outside the gate: rollbacks and forced promotions, each recorded.

A person (``rapport rollback``, ``rapport promote --force``) or the cycle's automatic
rollback (:mod:`training.cycle`) changes ``@champion`` through :mod:`models.registry`
(the old champion kept as ``@previous``, the service's bundle refreshed); the change and
its reason go to the warehouse table ``champion_changes`` and onto the MLflow version as
tags, so that neither place can be read without seeing the override.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from features.tables.cycle import record_change
from features.warehouse import raw
from models import registry
from models.registry import ChampionChange

#: MLflow version tags set on the version a change crowned
ACTION_TAG = "rapport.champion_change"
REASON_TAG = "rapport.champion_change_reason"


@dataclass(frozen=True)
class Override:
    """A recorded champion change."""

    kind: str
    action: str
    change: ChampionChange
    reason: str

    def summary(self) -> str:
        before = f" (was v{self.change.previous})" if self.change.previous else ""
        verb = {"force": "forced to", "rollback": "rolled back to"}.get(self.action, "set to")
        bundled = (
            f"; bundled as {self.change.bundle}"
            if self.change.bundle
            else f"; not bundled: {self.change.bundle_note}"
        )
        return (
            f"{self.kind}@champion {verb} v{self.change.champion}{before}, "
            f"recorded with reason: {self.reason}{bundled}"
        )


def _record(
    con: Any, kind: str, action: str, change: ChampionChange, reason: str, run: str | None
) -> Override:
    record_change(raw(con), kind, action, change.champion, change.previous, reason, run)
    stamp = f"{action} at {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
    if change.previous:
        stamp += f", replacing v{change.previous}"
    registry.tag_version(kind, change.champion, {ACTION_TAG: stamp, REASON_TAG: reason})
    return Override(kind, action, change, reason)


def rollback(
    con: Any,
    kind: str,
    reason: str,
    to: str | int | None = None,
    action: str = "rollback",
    cycle_run: str | None = None,
) -> Override:
    """Restore ``kind@previous`` (or version ``to``) as champion and record why.

    ``con``: the warehouse, opened read-write (the record goes to ``champion_changes``).
    """
    if not reason.strip():
        raise ValueError("a rollback needs a reason (it is recorded)")
    change = registry.rollback(registry.check_kind(kind), to)
    return _record(con, kind, action, change, reason.strip(), cycle_run)


def force_promote(con: Any, kind: str, version: str | int, reason: str) -> Override:
    """Make ``version`` the champion without the gate, recorded as an override."""
    if not reason.strip():
        raise ValueError("a forced promotion needs a reason (it is recorded)")
    found = registry.get_version(registry.check_kind(kind), version=version)
    if registry.aliases(kind).get(registry.CHAMPION) == str(found.version):
        raise ValueError(f"{kind} v{found.version} already is the champion")
    change = registry.set_champion(kind, str(found.version))
    return _record(con, kind, "force", change, reason.strip(), None)
