"""What scoring one customer returns: one typed result from the scorer to the response.

:meth:`models.scorer.Scorer.score_one` builds a :class:`CustomerScore`; the service's
response (:class:`serving.schemas.Score`) is that result plus who was scored, when, and
the decision's id, so the live score has one shape from the models to the JSON. Pydantic
models because they are the response's contract too (OpenAPI: the class docstrings are
its descriptions, so plain text); NaN serialises as null.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

_RESULT = ConfigDict(ser_json_inf_nan="null")


class Reason(BaseModel):
    """One driver of a prediction: the feature, its value, how it pushed (the
    contribution to the raw score, log-odds for churn) and the sentence an agent reads."""

    feature: str
    value: float | str | None
    phrase: str
    direction: Literal["up", "down"]
    contribution: float
    text: str


class Churn(BaseModel):
    model_config = _RESULT

    probability: float
    reasons: list[Reason] = []


class Value(BaseModel):
    """Expected value over the horizon: mean and the 10 / 50 / 90 % quantiles."""

    model_config = _RESULT

    p10: float
    p50: float
    p90: float
    mean: float


class RankedAction(BaseModel):
    """An allowed action, best first: expected value = uplift x value - cost, weighted."""

    model_config = _RESULT

    action: str
    channel: str
    expected_value: float
    propensity: float
    uplift: float
    value: float
    cost: float
    weight: float


class Chosen(BaseModel):
    """The action drawn for this contact and the probability it had (for off-policy
    evaluation)."""

    action: str
    channel: str
    propensity: float


class Excluded(BaseModel):
    action: str
    reason: str


class CustomerScore(BaseModel):
    """One customer's churn, value, segments, ranked actions and the chosen one."""

    model_config = _RESULT

    churn: Churn
    value: Value
    abc_tier: str
    rfm_segment: str
    actions: list[RankedAction]
    chosen: Chosen
    excluded: list[Excluded] = []
    #: ``control`` (the always-on control group: no policy action), ``treated`` (the
    #: policy's top action) or ``explore`` (an exploration draw); see features/control.py
    group: Literal["control", "treated", "explore"] = "treated"
