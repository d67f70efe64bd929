"""Target lists from the warehouse: ``rapport targets`` (selection logic in
:mod:`models.targeting`, shared with the service's ``POST /targets``).

:func:`build_list` reads the latest scoring run (``scores``, ``score_runs``), computes as
of now only the features the list needs -- the filter's fields and what arbitration
reads: consent flags, contact counts per channel, days since each action -- with a
reduced feature spec (seconds even for a million customers), joins them to the scores
and selects. Consent and contact history are therefore current even when the scores are
from last night. Suppressions come from the warehouse table ``suppressions``
(``customer_id, reason, added_at``; :func:`add_suppressions`) and/or a file.

:func:`record` writes the list and its definition to ``target_lists`` and its members to
``target_list_members`` for audit (:func:`features.tables.scores.record_lists`, which ``rapport
ingest --outbox`` also uses for the lists the service made); :func:`export` writes CSV or
Parquet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from features.batch import as_utc, build
from features.spec import FeatureSpec, default_spec
from features.tables.scores import (
    SUPPRESSIONS,
    SUPPRESSIONS_DDL,
    NoScoresError,
    RunInfo,
    latest_run,
    load_scores,
    new_list_id,
    record_lists,
    suppressed_ids,
)
from features.warehouse import raw
from models.catalog import Catalog
from models.expressions import ExpressionError
from models.targeting import (
    Selection,
    TargetDefinition,
    TargetError,
    check_filter,
    default_definitions,
    feature_subset,
    needed_features,
    parse_definitions,
    select_targets,
)
from rapport.settings import get_settings

Progress = Callable[[str], None]
#: errors the CLI shows as one clean line
ERRORS = (TargetError, ExpressionError, NoScoresError, FileNotFoundError)


def definitions(extra: Path | None = None) -> dict[str, TargetDefinition]:
    """Saved lists: packaged examples, then ``<home>/target_lists.yaml``, then ``extra``."""
    found = default_definitions()
    paths = [get_settings().target_lists_path]
    if extra is not None:
        if not extra.exists():
            raise FileNotFoundError(f"no list definitions file {extra}")
        paths.append(extra)
    for path in paths:
        if path.exists():
            found.update(parse_definitions(path.read_text("utf-8"), source=str(path)))
    return found


def resolve(
    name: str | None, options: dict[str, Any], extra: Path | None = None
) -> TargetDefinition:
    """A saved list by name with ``options`` on top, or an ad-hoc definition."""
    from models.targeting import definition_from

    base = None
    if name is not None:
        saved = definitions(extra)
        if name not in saved:
            raise TargetError(f"no saved list {name!r}; known lists: {sorted(saved)}")
        base = saved[name]
    return definition_from(options, base)


def read_suppression_file(path: Path) -> set[str]:
    """Customer ids from a CSV / Parquet file with a ``customer_id`` column, or a text file
    with one id per line."""
    if not path.exists():
        raise FileNotFoundError(f"no suppression file {path}")
    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, dtype=str)
    else:
        lines = path.read_text("utf-8").splitlines()
        return {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    if "customer_id" not in frame.columns:
        raise TargetError(f"{path}: a suppression file needs a customer_id column")
    return {str(v).strip() for v in frame["customer_id"].dropna()}


def add_suppressions(con: Any, customer_ids: Iterable[str], reason: str = "opt-out") -> int:
    """Add customers to the warehouse's suppression list (never contacted by any list)."""
    db = raw(con)
    db.execute(SUPPRESSIONS_DDL)
    ids = sorted({str(c) for c in customer_ids})
    if ids:
        frame = pd.DataFrame({"customer_id": ids, "reason": reason})
        db.register("new_suppressions", frame)
        db.execute(
            f"INSERT INTO {SUPPRESSIONS} (customer_id, reason) "
            f"SELECT customer_id, reason FROM new_suppressions"
        )
        db.unregister("new_suppressions")
    return len(ids)


def candidate_frame(
    con: Any,
    run: RunInfo,
    definition: TargetDefinition,
    catalog: Catalog,
    as_of: datetime,
    spec: FeatureSpec,
) -> pd.DataFrame:
    """The run's scores joined with the features the list needs, computed as of ``as_of``."""
    names = needed_features(definition, catalog, spec)
    features = build(con, as_of, feature_subset(spec, names))
    scores = load_scores(raw(con), run)
    scores["customer_id"] = scores["customer_id"].astype(str)
    features = features[["customer_id", *names]]
    features["customer_id"] = features["customer_id"].astype(str)
    return scores.merge(features, on="customer_id", how="left")


@dataclass
class TargetList:
    selection: Selection
    run: RunInfo
    as_of: datetime
    list_id: str
    output: Path | None = None

    def summary(self) -> str:
        head = (
            f"list {self.list_id} from scores {self.run.run_id} (as of "
            f"{self.run.as_of:%Y-%m-%d %H:%M} UTC), features as of {self.as_of:%Y-%m-%d %H:%M}"
        )
        lines = [head, self.selection.summary()]
        if self.output is not None:
            lines.append(f"  written to {self.output}")
        return "\n".join(lines)


def build_list(
    con: Any,
    definition: TargetDefinition,
    as_of: datetime | str | None = None,
    run_id: str | None = None,
    suppress: Iterable[str] = (),
    spec: FeatureSpec | None = None,
    progress: Progress | None = None,
) -> TargetList:
    """Select the list from the latest scores (or ``run_id``); nothing is written."""
    say = progress or (lambda _: None)
    spec = spec or default_spec()
    expression = definition.expression
    if expression is not None:
        check_filter(expression, spec)
    run = latest_run(raw(con), run_id)
    catalog = Catalog.model_validate(run.catalog)
    cutoff = as_utc(as_of) if as_of is not None else datetime.now(UTC)
    say(f"reading scores {run.run_id} ({run.rows:,} customers) and current consent / contacts")
    frame = candidate_frame(con, run, definition, catalog, cutoff, spec)
    blocked = suppressed_ids(raw(con)) | set(suppress)
    selection = select_targets(frame, catalog, definition, blocked, not run.has_uplift)
    return TargetList(selection, run, cutoff, new_list_id())


def export(members: pd.DataFrame, path: Path) -> Path:
    """CSV or Parquet by the file's suffix."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise TargetError(f"export to a .csv or .parquet file, not {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        members.to_csv(path, index=False)
    else:
        members.to_parquet(path, index=False)
    return path


def record(con: Any, target: TargetList) -> str:
    """Keep the list, its definition and its members in the warehouse for audit."""
    row, members = target.selection.audit(
        target.list_id,
        target.run.run_id,
        target.run.as_of,
        target.as_of,
        str(target.output) if target.output else None,
    )
    record_lists(raw(con), pd.DataFrame([row]), members)
    return target.list_id


def demo_list(
    con: Any,
    as_of: datetime,
    say: Progress,
    progress: Progress | None = None,
    name: str = "at_risk_high_value",
) -> TargetList:
    """What ``rapport demo`` shows: score everyone, then one saved list, exported."""
    from training.scoring import score_all

    say(score_all(con, as_of, progress=progress).summary())
    target = build_list(con, resolve(name, {}), as_of, progress=progress)
    target.output = export(target.selection.members, get_settings().exports_dir / f"{name}.csv")
    record(con, target)
    say(target.summary())
    say(
        'more lists: uv run rapport targets --filter "churn_probability > 0.5 and '
        "abc_tier == 'A'\" --budget 5000 --out list.csv   (saved ones: --show-lists)"
    )
    return target
