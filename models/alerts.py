"""Monitoring thresholds: which number of which check is ``ok``, ``warn`` or ``alert``.

Operators edit them as YAML (``models/default_alerts.yaml`` is shipped; ``rapport monitor
--thresholds FILE`` reads another). They are validated strictly on load: an unknown check,
a misspelt key or a bad number fails with the file and line, since a silently ignored
threshold is a monitor that never pages.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.yamlconfig import at_line, load_mapping, validate

Level = Literal["ok", "warn", "alert"]
LEVELS: tuple[Level, ...] = ("ok", "warn", "alert")
_STRICT = ConfigDict(frozen=True, extra="forbid")
DEFAULT_SOURCE = "models/default_alerts.yaml"


class AlertsError(ValueError):
    """Thresholds that cannot be used; the message names the file and line."""


class Threshold(BaseModel):
    """``warn`` (optional) and ``alert`` bounds of one check's number."""

    model_config = _STRICT

    warn: float | None = Field(default=None, ge=0)
    alert: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Threshold:
        if self.warn is not None and self.warn > self.alert:
            raise ValueError(f"warn ({self.warn}) must not exceed alert ({self.alert})")
        return self

    def level(self, value: float) -> Level:
        """Higher is worse; a missing number (NaN) is ``ok`` (nothing to judge)."""
        if not math.isfinite(value):
            return "ok"
        if value > self.alert:
            return "alert"
        if self.warn is not None and value > self.warn:
            return "warn"
        return "ok"


class ChurnThresholds(BaseModel):
    model_config = _STRICT
    auc_drop: Threshold
    estimated_auc_drop: Threshold
    calibration_error: Threshold
    rate_gap: Threshold
    #: partly matured run: (holdout's - run's) share of the expected buyers who bought in
    #: the elapsed days, beyond noise, over the holdout's (see ``partial_days``); a group
    #: other than the base warns at most, against its own earlier runs once recorded
    active_shortfall: Threshold = Threshold(warn=0.05, alert=0.10)
    #: partly matured run, per region: -log10 of the Holm-adjusted one-sided p-value that
    #: its customers bought less in the elapsed days than same-risk customers elsewhere
    active_vs_peers: Threshold = Threshold(warn=1.3, alert=2.0)
    #: partly matured run, per region: the same for complaints per customer (an excess)
    complaints_vs_peers: Threshold = Threshold(warn=1.3, alert=2.0)
    #: partly matured run, whole base: complaints per active customer in the elapsed days
    #: over the same in the ``past_windows`` windows before, beyond noise, as a share
    complaints_vs_past: Threshold = Threshold(warn=0.25, alert=0.5)


class ValueThresholds(BaseModel):
    model_config = _STRICT
    coverage_gap: Threshold
    total_error: Threshold
    spearman_drop: Threshold
    #: partly matured run: (holdout's - run's) revenue in the elapsed days per unit of
    #: predicted horizon value, beyond noise, over the holdout's (a group: as above)
    revenue_shortfall: Threshold = Threshold(warn=0.05, alert=0.10)


class FeatureThresholds(BaseModel):
    model_config = _STRICT
    psi: Threshold
    ks: Threshold
    js: Threshold
    emptied: Threshold
    #: drift of a feature holding less than this share of the champions' gain warns at
    #: most (their predictions barely read it; the score checks show any effect)
    min_importance: float = Field(default=0.01, ge=0, le=1)


class PolicyThresholds(BaseModel):
    """Policy health (:mod:`training.policy_health`); every number is higher-is-worse."""

    model_config = _STRICT
    #: -(incremental value) / (half-width of its 95% interval): 1 = the upper bound is 0
    value_shortfall: Threshold
    #: |realised - predicted uplift| / half-width of the realised uplift's 95% interval
    uplift_gap: Threshold
    #: 1 - (smallest per-action Kish ESS of the inverse-propensity weights) / min_ess,
    #: floored at 0: 1 = an action once logged is no longer explored at all
    ess_shortfall: Threshold
    #: the largest inverse-propensity weight (1 / the smallest logged propensity)
    max_weight: Threshold
    #: Jensen-Shannon distance of the treated action mix, latest period vs the one before
    action_mix_js: Threshold
    #: the most frequent action's share of the latest period's treated decisions
    top_action_share: Threshold
    #: (off-policy estimate at promotion - realised upper bound) / |estimate|
    ope_shortfall: Threshold
    #: control customers (per period) needed before value_shortfall is judged
    min_control: int = Field(default=50, ge=2)
    #: effective decisions per action the latest period should hold (see ess_shortfall)
    min_ess: float = Field(default=30.0, gt=0)


class SkewThresholds(BaseModel):
    """Live against batch: the two executions must agree, so any mismatch alerts by default."""

    model_config = _STRICT
    #: sampled live vectors disagreeing with their batch rebuild (per feature, and in all)
    mismatches: Threshold = Threshold(alert=0)


class Alerts(BaseModel):
    """Every threshold the monitor applies."""

    model_config = _STRICT

    min_rows: int = Field(default=200, ge=1)
    #: a scoring run whose horizon has not matured is judged on its elapsed days once
    #: this many have passed (one scoring period)
    partial_days: int = Field(default=28, ge=1)
    #: the region peer checks judge a region's gap to its peers against its own gap in up
    #: to this many earlier scoring runs (pooled) when any was monitored; 0 = against the
    #: peers of the same run only. A group's first-days ratio (``*_shortfall``) likewise
    #: against its own in up to this many earlier runs (0 = the holdout's only)
    peer_history: int = Field(default=3, ge=0, le=24)
    #: the base's complaints in a partly matured run's elapsed days are compared with this
    #: many windows of as many days just before its cutoff; 0 = not checked
    past_windows: int = Field(default=3, ge=0, le=24)
    churn: ChurnThresholds
    value: ValueThresholds
    features: FeatureThresholds
    policy: PolicyThresholds
    skew: SkewThresholds = SkewThresholds()

    def threshold(self, kind: str, check: str) -> Threshold:
        """The threshold of ``kind.check``; KeyError naming it when there is none."""
        group = getattr(self, kind, None)
        found = getattr(group, check, None) if isinstance(group, BaseModel) else None
        if not isinstance(found, Threshold):
            raise KeyError(f"no threshold {kind}.{check}")
        return found


def parse_alerts(text: str, source: str = "<thresholds>") -> Alerts:
    """Validate thresholds YAML; :class:`AlertsError` names ``source``, the line and the
    field of every problem."""
    data, node = load_mapping(text, source, AlertsError, "a mapping of checks")
    return validate(
        Alerts,
        data,
        AlertsError,
        "invalid monitoring thresholds",
        at_line(source, node),
        "unknown check or key",
    )


def load_alerts(path: Path | str | None = None) -> Alerts:
    """The thresholds of ``path``, or the shipped defaults."""
    if path is None:
        text = resources.files("models").joinpath("default_alerts.yaml").read_text("utf-8")
        return parse_alerts(text, DEFAULT_SOURCE)
    path = Path(path)
    if not path.is_file():
        raise AlertsError(f"{path}: no such thresholds file")
    return parse_alerts(path.read_text("utf-8"), str(path))
