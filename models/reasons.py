"""Plain-language reasons from per-feature contributions, worded by the feature spec.

LightGBM's ``pred_contrib`` gives, for one customer, how much each feature pushed the raw
score up or down. This module turns the largest pushes into short phrases an agent can
read ("no order for 94 days (raises risk)"). The wording comes only from the spec's phrase
templates (``features.spec``), so a new feature gets its reason text where it is declared,
never here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from features.spec import Agg, Attribute, Feature, FeatureSpec, default_spec

Direction = Literal["up", "down"]
#: the words appended to a phrase for each direction, per model
CHURN_WORDS: dict[Direction, str] = {"up": "raises risk", "down": "lowers risk"}
VALUE_WORDS: dict[Direction, str] = {"up": "raises value", "down": "lowers value"}


_BY_NAME: dict[int, tuple[FeatureSpec, dict[str, Feature]]] = {}


def _by_name(spec: FeatureSpec) -> dict[str, Feature]:
    """``spec.by_name()``, built once per spec (a frozen spec; per live score it cost
    more than the reasons' wording)."""
    cached = _BY_NAME.get(id(spec))
    if cached is None or cached[0] is not spec:
        if len(_BY_NAME) > 16:
            _BY_NAME.clear()
        cached = _BY_NAME[id(spec)] = (spec, spec.by_name())
    return cached[1]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> float | str | None:
    """numpy scalars to Python ones, so a reason serialises to JSON as is."""
    if isinstance(value, np.generic):
        value = value.item()
    return None if _is_missing(value) else value


def _missing_phrase(feature: Feature | None, name: str) -> str:
    """Wording for a null value (no event in the window, ratio without a base)."""
    if isinstance(feature, Agg):
        window = "ever" if feature.days is None else f"in {feature.window_text}"
        return f"no {feature.label} {window}"
    readable = name.replace("_", " ")
    return f"{readable} unknown" if isinstance(feature, Attribute) else f"{readable} not available"


def describe(name: str, value: Any, spec: FeatureSpec | None = None) -> str:
    """The spec's phrase for ``name`` filled with ``value`` (features outside the spec,
    e.g. from a notebook's own table, read ``name = value``)."""
    return _phrase((spec or default_spec()).by_name().get(name), name, value)


def _phrase(feature: Feature | None, name: str, value: Any) -> str:
    if _is_missing(value):
        return _missing_phrase(feature, name)
    if feature is None:
        return f"{name.replace('_', ' ')} = {value}"
    try:
        return feature.phrase.format(value=value)
    except (TypeError, ValueError):
        return f"{name.replace('_', ' ')} = {value}"


def top_reasons(
    contributions: np.ndarray,
    values: Sequence[Any],
    names: Sequence[str],
    top: int = 3,
    words: dict[Direction, str] = CHURN_WORDS,
    spec: FeatureSpec | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The ``top`` largest positive and negative contributions of one row, as phrases.

    ``contributions`` has one entry per feature (LightGBM's trailing bias column removed);
    ``values`` are the row's feature values as the caller knows them (categories as text).
    Returns ``{"up": [...], "down": [...]}``, strongest first, of dicts shaped as
    :class:`models.results.Reason` (plain dicts: this runs per live score).
    """
    if len(contributions) != len(names) or len(values) != len(names):
        raise ValueError(
            f"{len(contributions)} contributions, {len(values)} values and {len(names)} "
            "feature names must match"
        )
    features = _by_name(spec or default_spec())
    order = np.argsort(-contributions, kind="stable")
    pushes = contributions.tolist()  # plain floats: per live score, numpy scalars cost more
    ups = [j for j in order[:top].tolist() if pushes[j] > 0]
    downs = [j for j in order[::-1][:top].tolist() if pushes[j] < 0]
    out: dict[str, list[dict[str, Any]]] = {}
    for direction, picks in (("up", ups), ("down", downs)):
        reasons = []
        for j in picks:
            value = _plain(values[j])
            phrase = _phrase(features.get(names[j]), names[j], value)
            reasons.append(
                {
                    "feature": names[j],
                    "value": value,
                    "phrase": phrase,
                    "direction": direction,
                    "contribution": pushes[j],
                    "text": f"{phrase} ({words[direction]})",  # type: ignore[index]
                }
            )
        out[direction] = reasons
    return out


def common_reasons(
    explanations: Sequence[dict[str, list[dict[str, Any]]]],
    direction: Direction = "up",
    top: int = 5,
    words: dict[Direction, str] = CHURN_WORDS,
    spec: FeatureSpec | None = None,
) -> list[dict[str, Any]]:
    """The features most often among a group's drivers in ``direction`` (the reasons of
    :func:`top_reasons`, one explanation per customer), most common first: ``feature``,
    ``customers`` and ``share`` of the group it drives, and a ``phrase`` / ``text`` worded
    with its typical value there (the median, or the most common category; missing when
    most of them lack it)."""
    found: dict[str, list[Any]] = {}
    for explanation in explanations:
        for reason in explanation.get(direction, []):
            found.setdefault(reason["feature"], []).append(reason["value"])
    features = (spec or default_spec()).by_name()
    n = max(len(explanations), 1)
    out = []
    for name, values in sorted(found.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]:
        phrase = _phrase(features.get(name), name, _typical(values))
        out.append(
            {
                "feature": name,
                "customers": len(values),
                "share": len(values) / n,
                "phrase": phrase,
                "text": f"{phrase} ({words[direction]})",
            }
        )
    return out


def _typical(values: Sequence[Any]) -> Any:
    """The median of the known numbers, else the most common value; None when most are
    missing (the phrase then says so)."""
    known = [v for v in values if not _is_missing(v)]
    if len(known) * 2 < len(values):
        return None
    numbers = [v for v in known if isinstance(v, int | float) and not isinstance(v, bool)]
    if numbers and len(numbers) == len(known):
        median = float(np.median(numbers))
        return round(median) if median.is_integer() else median
    return max(set(known), key=known.count) if known else None
