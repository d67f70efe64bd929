"""Where the control group's share and salt live: one small file, and its history table.

The current setting is ``<home>/control.json`` (``{"share", "salt", "changed_at"}``),
written atomically by ``rapport control``. A file rather than a warehouse row because
every path reads it: the live service at start and when the file changes (while the
warehouse may be held by an ingest or a scoring run: DuckDB allows one writer), batch
scoring, and target lists from the CLI and over HTTP. Without the file the default holds
(:data:`features.control.DEFAULT_SHARE`, the fixed initial salt), so a fresh workspace
agrees with itself before anyone runs ``rapport control``.

Every change (``--share``, ``--reshuffle``) is first appended to the warehouse table
``control_groups`` (``changed_at, share, salt, change, previous_share, previous_salt``)
and then written to the file, so the history of who was in control when is kept;
``rapport impact`` reads groups from the decisions themselves (``campaign_log.group``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from features.control import DEFAULT_SALT, DEFAULT_SHARE, ControlGroup, new_salt
from features.durable import replace_durably
from features.timeutil import as_utc
from features.warehouse import table_names

CONTROL_GROUPS = "control_groups"
CONTROL_FILE = "control.json"

DDL = f"""CREATE TABLE IF NOT EXISTS {CONTROL_GROUPS} (
    changed_at TIMESTAMPTZ, share DOUBLE, salt VARCHAR, change VARCHAR,
    previous_share DOUBLE, previous_salt VARCHAR
)"""


class ControlFileError(ValueError):
    """The control file exists but cannot be read (the message names it)."""


@dataclass(frozen=True)
class ControlSetting:
    """The control group in force and since when (None: the default, never changed)."""

    group: ControlGroup
    changed_at: datetime | None = None

    def describe(self) -> str:
        since = (
            f"since {self.changed_at:%Y-%m-%d %H:%M:%S} UTC"
            if self.changed_at is not None
            else "the default, never changed"
        )
        return f"control share {self.group.share:.2%}, salt {self.group.salt} ({since})"


def control_path(home: Path) -> Path:
    return Path(home) / CONTROL_FILE


def read_control(home: Path) -> ControlSetting:
    """The control setting of the workspace at ``home`` (the default without a file)."""
    path = control_path(home)
    if not path.exists():
        return ControlSetting(ControlGroup(DEFAULT_SHARE, DEFAULT_SALT))
    try:
        data = json.loads(path.read_text("utf-8"))
        group = ControlGroup(float(data["share"]), str(data["salt"]))
        changed = data.get("changed_at")
        return ControlSetting(group, as_utc(datetime.fromisoformat(changed)) if changed else None)
    except (ValueError, KeyError, TypeError) as exc:
        raise ControlFileError(f"cannot read the control group file {path}: {exc}") from None


def _write_file(path: Path, setting: ControlSetting) -> None:
    """Atomically: a reader sees the old or the new setting, never half of one."""
    assert setting.changed_at is not None
    body = {
        "share": setting.group.share,
        "salt": setting.group.salt,
        "changed_at": setting.changed_at.isoformat(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_durably(path, json.dumps(body).encode("utf-8"))


def change_control(
    db: Any,
    home: Path,
    share: float | None = None,
    reshuffle: bool = False,
    now: datetime | None = None,
) -> ControlSetting:
    """Set a new share and/or draw a new salt; recorded in ``control_groups`` (raw DuckDB
    connection ``db``), then written to the file. Raises ValueError for a bad share."""
    if share is None and not reshuffle:
        raise ValueError("nothing to change: give a share or reshuffle")
    old = read_control(home)
    group = ControlGroup(
        old.group.share if share is None else share,
        new_salt() if reshuffle else old.group.salt,
    )
    changed_at = as_utc(now) if now is not None else datetime.now(UTC)
    parts = []
    if share is not None:
        parts.append(f"share {old.group.share:g} -> {group.share:g}")
    if reshuffle:
        parts.append("reshuffle")
    db.execute(DDL)
    db.execute(
        f"INSERT INTO {CONTROL_GROUPS} VALUES (?, ?, ?, ?, ?, ?)",
        [changed_at, group.share, group.salt, "; ".join(parts), old.group.share, old.group.salt],
    )
    setting = ControlSetting(group, changed_at)
    _write_file(control_path(home), setting)
    return setting


def control_history(db: Any) -> pd.DataFrame:
    """Every recorded change, oldest first (empty before the first)."""
    have = table_names(db)
    if CONTROL_GROUPS not in have:
        return pd.DataFrame(
            columns=["changed_at", "share", "salt", "change", "previous_share", "previous_salt"]
        )
    return (
        db.execute(f"SELECT * FROM {CONTROL_GROUPS} ORDER BY changed_at")
        .to_arrow_table()
        .to_pandas()
    )


def count_members(db: Any, group: ControlGroup) -> tuple[int, int]:
    """(customers in the control group, customers in the warehouse)."""
    have = table_names(db)
    if "customers" not in have:
        return 0, 0
    ids = [r[0] for r in db.execute("SELECT customer_id FROM customers").fetchall()]
    return int(group.mask(ids).sum()), len(ids)
