"""What every monitoring check shares: :class:`Checks`, the rows of one monitoring run
judged by the thresholds; the subjects a check reports on (the base, each ABC tier and RFM
segment); and the champion's holdout figures per subject that realised ones are judged
against. Its own module so the partly matured, drift and policy checks
(:mod:`training.monitor_partial`, :mod:`training.monitor_drift`,
:mod:`training.policy_health`) need not import the job (:mod:`training.monitor`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from models import registry
from models.alerts import LEVELS, Alerts, Level

GROUPS = ("abc_tier", "rfm_segment")
GROUP_LABEL = {"abc_tier": "tier", "rfm_segment": "segment", "region": "region"}
SCORES = ("churn_probability", "value_mean")
NAN = float("nan")


class Checks:
    """Collects check rows and curve points for one monitoring run."""

    def __init__(self, alerts: Alerts) -> None:
        self.alerts = alerts
        self.rows: list[dict[str, Any]] = []
        self.curves: list[pd.DataFrame] = []
        #: the region peer checks' figures per region (``monitor_peers`` rows)
        self.peers: list[pd.DataFrame] = []

    def add(
        self,
        kind: str,
        check: str,
        subject: str,
        value: float,
        detail: str,
        rows: int | None = None,
        judged: bool = True,
        cap: Level | None = None,
    ) -> None:
        """A check judged by ``kind.check``'s threshold (``judged=False``: a figure shown
        and charted without one). A group smaller than ``min_rows`` is never above ok."""
        value = float(value)
        threshold, level = NAN, "ok"
        if judged:
            bound = self.alerts.threshold(kind, check)
            threshold = bound.alert
            level = bound.level(value)
            if cap is not None and LEVELS.index(level) > LEVELS.index(cap):
                level = cap
            if rows is not None and rows < self.alerts.min_rows:
                level = "ok"
                detail += f"; {rows} rows < min_rows {self.alerts.min_rows}: not judged"
        if rows is not None:
            detail = f"{detail}; rows {rows}" if detail else f"rows {rows}"
        self.rows.append(
            {
                "kind": kind,
                "check": check,
                "subject": subject,
                "value": value,
                "threshold": threshold,
                "level": level,
                "detail": detail,
            }
        )

    def curve(self, name: str, subject: str, scoring_run: str, frame: pd.DataFrame) -> None:
        self.curves.append(frame.assign(curve=name, subject=subject, scoring_run=scoring_run))


def subjects(
    frame: pd.DataFrame, columns: list[str], groups: tuple[str, ...] = GROUPS
) -> list[tuple[str, pd.DataFrame]]:
    """The whole base, then each ABC tier and RFM segment (and any other of ``groups``):
    what realised checks report on, each named for people ("all", "tier A", "segment
    Champions", ...); only ``columns`` are carried (splitting every column of a million
    rows costs seconds)."""
    frame = frame[[*columns, *(g for g in groups if g not in columns)]]
    subjects: list[tuple[str, pd.DataFrame]] = [("all", frame)]
    for group in groups:
        for name, part in frame.groupby(group, observed=True):
            subjects.append((f"{GROUP_LABEL[group]} {name}", part))
    return subjects


class Holdout:
    """The champion's holdout figures per subject (:func:`training.monitor.group_figures`,
    stored with the model version by ``rapport train``); a subject or a figure it lacks
    (a version trained before they were stored) reads as unknown."""

    def __init__(self, kind: str, version: str | None) -> None:
        frame = None
        if version is not None:
            try:
                frame = registry.load_reference(kind, version, registry.GROUPS_ARTIFACT)
            except LookupError:
                frame = None
        self.known = frame is not None
        self.figures = {} if frame is None else frame.set_index("subject").to_dict("index")

    def get(self, subject: str, figure: str) -> float:
        value = self.figures.get(subject, {}).get(figure, NAN)
        return float(value) if value is not None else NAN
