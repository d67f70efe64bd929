"""Decisions the service logged for customers the warehouse does not know yet (a cold-start
score) wait in the outbox instead of being quarantined as "unknown customer" and moved to
``done/`` with their file, where they would never land (issue 22).

Before ``rapport ingest --outbox`` loads ``campaign_log`` segments, :func:`hold_unknown`
moves the lines of unknown customers out of each segment into a
``<outbox>/campaign_log/pending-*.jsonl`` file of their own; every later ingest reads the
pending files with the new segments, so the decisions land as soon as their customer has
been ingested. Each step writes a complete file before it replaces one (a crash repeats a
step; ingest collapses identical rows), and the count is reported.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from features.durable import replace_durably
from features.warehouse import raw, table_names

#: the outbox table whose rows may name customers unknown to the warehouse
DECISIONS = "campaign_log"
PENDING_PREFIX = "pending-"


def _known(con: Any, ids: set[str]) -> set[str]:
    db = raw(con)
    if not ids or "customers" not in table_names(db):
        return set()
    rows = db.execute(
        "SELECT customer_id FROM customers WHERE customer_id IN (SELECT unnest(?))", [list(ids)]
    ).fetchall()
    return {r[0] for r in rows}


def _write(path: Path, lines: list[bytes]) -> None:
    """``lines`` as ``path``, complete or not at all (temporary file, fsync, rename)."""
    replace_durably(path, b"".join(lines))


def _customer(line: bytes) -> str:
    return str(json.loads(line)["customer_id"])


def hold_unknown(con: Any, paths: list[Path]) -> tuple[list[Path], int]:
    """Move the decisions of unknown customers in ``paths`` (sealed ``campaign_log``
    segments and earlier pending files) into one new pending file; returns the files to
    ingest now (without those lines; the new pending file is not among them) and how many
    decisions wait. The pending file is written before any source file changes."""
    lines = {
        p: [ln for ln in p.read_bytes().splitlines(keepends=True) if ln.strip()] for p in paths
    }
    known = _known(con, {_customer(ln) for found in lines.values() for ln in found})
    waiting = [ln for found in lines.values() for ln in found if _customer(ln) not in known]
    if not waiting:
        return paths, 0
    _write(paths[0].parent / f"{PENDING_PREFIX}{uuid.uuid4().hex}.jsonl", waiting)
    kept = []
    for path, found in lines.items():
        stay = [ln for ln in found if _customer(ln) in known]
        if not stay:
            path.unlink()
        else:
            if len(stay) < len(found):
                _write(path, stay)
            kept.append(path)
    return kept, len(waiting)
