"""The input checks of ``rapport monitor``: drift of every feature and score between
the champion's reference (its holdout snapshot, stored with the model version) and the
latest scoring run (:func:`check_drift`), and live against batch skew of the feature
vectors the service sampled (:func:`check_skew_into`)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa

from features.batch import build
from features.contract import CAMPAIGN_LOG, INTERACTIONS, TABLES
from features.resolve import CHANGES, clusters_as_of, person_tables
from features.spec import FeatureSpec, default_spec
from features.tables.feature_samples import mismatches, read_samples
from features.tables.scores import RunInfo, load_feature_sample, sample_ids
from features.warehouse import raw, table_names
from models import monitoring as stats
from models import registry
from models.alerts import Alerts, Level, load_alerts
from rapport.settings import get_settings
from training.datasets import Progress
from training.monitor_checks import SCORES, Checks

#: ``emptied`` is judged only when the reference's informative share would give this many
#: informative rows in the run (below it, a rare feature empties by chance)
EMPTIED_MIN_ROWS = 100


def check_drift(
    c: Checks,
    run: RunInfo,
    current: pd.DataFrame,
    reference: pd.DataFrame,
    categorical: set[str],
    importance: dict[str, float],
    policy: Collection[str] = (),
    calendar: Collection[str] = (),
) -> None:
    """PSI and a two-sample statistic per feature and score, and the share of each
    feature's information gone; drift of a feature the champions barely use (gain share
    under ``min_importance``), of a ``policy`` feature (:func:`policy_features`) or of a
    ``calendar`` one (:func:`calendar_features`) warns at most."""
    tag = f"scoring run {run.run_id} ({run.as_of:%Y-%m-%d}) vs the champion's reference"
    floor = c.alerts.features.min_importance
    for name in [*importance, *SCORES]:
        if name not in reference.columns or name not in current.columns:
            continue
        ref, cur = reference[name], current[name]
        if name not in categorical:
            ref = pd.to_numeric(ref, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            cur = pd.to_numeric(cur, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        is_score = name in SCORES
        subject = f"score {name}" if is_score else name
        share = importance.get(name, 1.0)
        minor = not is_score and (share < floor or name in policy or name in calendar)
        why = (
            "policy feature: the company's own actions or contacts"
            if name in policy
            else "calendar feature: drifts as the base ages"
            if name in calendar
            else "minor"
        )
        note = f"{tag}; gain share {share:.3f}" + (f" ({why}: warns at most)" if minor else "")
        if name in categorical:
            values = {"psi": stats.psi_categorical(ref, cur), "js": stats.js_distance(ref, cur)}
            note += f"; chi-square p {stats.chi2_test(ref, cur):.3g}"
        else:
            d, p_value = stats.ks_test(ref, cur)
            values = {"psi": stats.psi_numeric(ref, cur), "ks": d}
            note += f"; KS p {p_value:.3g}"
        for check, value in values.items():
            c.add("features", check, subject, value, note, len(cur), cap="warn" if minor else None)
        if not is_score:
            expected = stats.informative_share(ref) * len(cur)
            rare = expected < EMPTIED_MIN_ROWS
            note = f"{tag}; {expected:.0f} informative rows expected" + (
                f" (< {EMPTIED_MIN_ROWS}: too rare to judge)" if rare else ""
            )
            cap: Level | None = "warn" if name in policy else None
            if cap is not None:
                note += f" ({why}: warns at most)"
            value = stats.emptied(ref, cur)
            c.add("features", "emptied", subject, value, note, len(cur), not rare, cap)


def champion_reference(versions: dict[str, str]) -> pd.DataFrame | None:
    """The reference stored with the churn champion ``versions`` name, with the value
    champion's scores of the same rows (``value_mean``) when it has one; None when the
    churn version has none."""
    churn, value = versions.get("churn"), versions.get("value")
    reference = registry.load_reference("churn", churn) if churn else None
    value_ref = registry.load_reference("value", value) if value else None
    if reference is not None and value_ref is not None:
        reference = with_value(reference, value_ref)
    return reference


def with_value(reference: pd.DataFrame, value_ref: pd.DataFrame) -> pd.DataFrame:
    """``reference`` with the value reference's ``value_mean`` of the same customer and
    cutoff (NaN where it has none): the two references are sampled apart (champions from
    different training runs, or sampled sets), so rows are matched, never aligned."""
    keys = ["customer_id", "as_of"]
    values = value_ref[[*keys, "value_mean"]].drop_duplicates(keys)
    return reference.drop(columns="value_mean", errors="ignore").merge(values, on=keys, how="left")


def run_features(
    con: Any, run: RunInfo, scored: pd.DataFrame, spec: FeatureSpec, say: Progress
) -> pd.DataFrame:
    """The features the scoring run kept (``score_features``: a fixed sample of
    :data:`~features.tables.scores.FEATURE_SAMPLE_ROWS` customers); for a run scored
    before runs kept them (or with another feature set), the same customers' features
    rebuilt as of its cutoff."""
    kept = load_feature_sample(raw(con), run.run_id, spec.names)
    if kept is not None and run.feature_set == spec.version:
        say(f"features scoring run {run.run_id} kept ({len(kept):,} customers)")
        return kept
    ids = sample_ids(scored["customer_id"])
    say(f"rebuilding the features of {len(ids):,} customers as of {run.as_of:%Y-%m-%d}")
    keep = ibis.memtable(pa.table({"customer_id": pa.array(list(ids), pa.string())}))
    only = {name: con.table(name).semi_join(keep, "customer_id") for name in TABLES}
    return build(con, run.as_of, spec, only)


def calendar_features(spec: FeatureSpec) -> set[str]:
    """Features that grow with the calendar by construction in any stable world: tenure
    and the days since the first event over all history (the base ages between the
    reference and a run months later: PSI 0.38 on ``days_since_first_order`` in a stable
    world of 20,000 customers, more as the runs get older), so their drift warns at most;
    a feed that stops still shows in ``emptied``."""
    names = {a.name for a in spec.attributes if a.kind == "tenure_days"}
    names |= {a.name for a in spec.aggs if a.agg == "days_since_first" and a.days is None}
    return names


def outbound_features(spec: FeatureSpec, channels: Collection[str]) -> set[str]:
    """Interaction counts of one of ``channels`` (those the company's actions contact
    customers on, :attr:`models.catalog.Action.channel`) that do not keep to inbound
    contacts: they count the company's own outbound contacts too (a campaign's emails
    sent, its service callbacks), which follow the campaign calendar. A 30-day window
    before a cutoff that a month's wave falls after has none of them: on the simulator
    ``call_contacts_30d`` loses half its non-zero values then (``emptied`` 0.52-0.57 at
    20,000 customers) with nothing broken. Like :func:`policy_features` their drift and
    ``emptied`` warn at most."""
    wanted = set(channels) - {"none"}
    names: set[str] = set()
    for a in spec.aggs:
        if a.source != INTERACTIONS.name:
            continue
        conds = {(c.column, c.op): c.value for c in a.where}
        if conds.get(("direction", "==")) == "inbound":
            continue
        if conds.get(("channel", "==")) in wanted:
            names.add(a.name)
    return names


def policy_features(spec: FeatureSpec) -> set[str]:
    """Features of the company's own actions (from the campaign log, and ratios of them
    only): they follow the campaign calendar and the policy, which the company sets, so
    their drift is worth knowing (it warns) but is no failure of data or model."""
    names = {a.name for a in spec.aggs if a.source == CAMPAIGN_LOG.name}
    for d in spec.derived:
        if {n for n, _ in (*d.numerator, *d.denominator)} <= names:
            names.add(d.name)
    return names


def gain_shares(versions: dict[str, str]) -> dict[str, float]:
    """Each feature's largest share of gain over the churn and value champions (the
    features every champion reads, in spec order)."""
    shares: dict[str, float] = {}
    for kind in ("churn", "value"):
        if kind not in versions:
            continue
        model, _ = registry.load_model(kind, version=versions[kind])
        gain = model.feature_importance()
        total = float(gain.sum()) or 1.0
        for name, value in gain.items():
            shares[str(name)] = max(shares.get(str(name), 0.0), float(value) / total)
    return shares


# --------------------------------------------------------------------------- skew
#: sampled live vectors rebuilt per monitoring run, the latest first (one batch build
#: over the sampled customers only per distinct instant)
SKEW_SAMPLES = 500


def check_skew_into(c: Checks, con: Any, spec: FeatureSpec, until: datetime | None) -> None:
    """Rebuild the sampled live feature vectors in batch, as of their exact instants (the
    batch build as of t reads events strictly before t, as the live evaluator does), and
    count the disagreements per feature; a sampled customer the batch build does not
    know at that instant is a mismatch too."""
    samples = read_samples(raw(con), until, SKEW_SAMPLES)
    current = samples[samples["feature_set"] == spec.version]
    other = len(samples) - len(current)
    counts: dict[str, int] = {}
    example: dict[str, str] = {}
    bad, missing = 0, 0
    for instant, group in current.groupby("computed_at", sort=True):
        ids = [str(i) for i in group["customer_id"].unique()]
        when = pd.Timestamp(instant).to_pydatetime()
        only = _persons_of(con, ids, when)
        batch = build(con, when, spec, only).set_index("customer_id")
        for row in group.itertuples():
            if row.customer_id not in batch.index:
                bad, missing = bad + 1, missing + 1
                continue
            rebuilt = batch.loc[row.customer_id].to_dict()
            wrong = mismatches(row.features, rebuilt, spec.names)
            bad += bool(wrong)
            for name in wrong:
                counts[name] = counts.get(name, 0) + 1
                example.setdefault(
                    name,
                    f"e.g. sample {row.sample_id} at {when.isoformat()}: live "
                    f"{row.features.get(name)!r}, batch {rebuilt.get(name)!r}",
                )
    worst = max(counts, key=lambda n: counts[n]) if counts else None
    detail = (
        f"{len(current)} sampled live vectors rebuilt in batch"
        + (f"; {other} of another feature set skipped" if other else "")
        + (f"; {missing} customers unknown to the batch build" if missing else "")
        + (f"; worst feature {worst} ({counts[worst]})" if worst else "")
    )
    c.add("skew", "samples", "all", len(current), detail, judged=False)
    c.add("skew", "mismatches", "all", bad, detail)
    for name, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        c.add("skew", "mismatches", name, count, f"of {len(current)} samples; {example[name]}")


def _persons_of(con: Any, ids: list[str], when: datetime) -> dict[str, Any]:
    """The contract tables of the sampled customers as their live records hold them at
    ``when``: once ``rapport resolve`` has run, a cluster id's record holds every member's
    events and the earliest signup (:func:`features.resolve.person_tables`, the clusters
    known at ``when``), so the rebuild merges them too. The Spark loader writes records per
    customer id (no merge yet): with that engine the rebuild does not merge either."""
    source = {name: con.table(name) for name in TABLES}
    if CHANGES not in table_names(raw(con)) or get_settings().engine == "spark":
        return {name: t.filter(t.customer_id.isin(ids)) for name, t in source.items()}
    return person_tables(source, clusters_as_of(con, when, ids), ids, keep_members=True)


def check_skew(
    con: Any,
    alerts: Alerts | None = None,
    spec: FeatureSpec | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """The skew checks alone (``kind``, ``check``, ``subject``, ``value``, ``level``, ...),
    as :func:`training.monitor.run` records them."""
    c = Checks(alerts or load_alerts())
    check_skew_into(c, con, spec or default_spec(), until)
    return pd.DataFrame(c.rows)
