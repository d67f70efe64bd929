"""The partly matured checks of ``rapport monitor``: a scoring run whose horizon has
elapsed by at least one scoring period, not all of it. What its customers did in the
elapsed days against what the champions predicted (``active_shortfall``,
``revenue_shortfall``), each region against its peers of the same churn risk
(``active_vs_peers``, ``complaints_vs_peers``) and the base's complaints against its own
recent past (``complaints_vs_past``): a change caught a period after it, before the
horizon matures (see :func:`check_partial`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from features.contract import CUSTOMERS, INTERACTIONS
from features.tables import monitoring as tables
from features.tables.scores import RunInfo, latest_run
from features.timeutil import as_utc
from features.warehouse import raw
from models import monitoring as stats
from models.alerts import Level
from training.datasets import labels
from training.monitor_checks import GROUP_LABEL, GROUPS, NAN, Checks, subjects

#: check -> (kind, what customers did in the elapsed days, what was predicted for the
#: horizon): bought at least once against 1 - churn probability (the churn model's
#: expected buyers), revenue against the value model's mean
EARLY: dict[str, tuple[str, str, str]] = {
    "active_shortfall": ("churn", "bought", "expected_buyer"),
    "revenue_shortfall": ("value", "spend", "value_mean"),
}
#: a customer attribute the elapsed-days checks also split by (a change often hits one
#: region first)
ATTRIBUTE = "region"
#: check -> (kind, what customers did, per what, excess or shortfall) compared per value of
#: ATTRIBUTE with the other values' customers of the same churn risk (see :func:`_peers`):
#: fewer buyers per expected buyer, more complaints per customer (a rising dropout hazard
#: is dissatisfaction, which complains long before the missing purchases add up). Revenue
#: is left out: heavy-tailed, its normal z is not to be trusted on a few hundred
#: customers, and each family judged adds its false alarms
PEERS: dict[str, tuple[str, str, str, bool]] = {
    "active_vs_peers": ("churn", "bought", "expected_buyer", False),
    "complaints_vs_peers": ("churn", "complaints", "customer", True),
}
#: why a group's first-days ratio (a tier, segment or region; not the base) warns at most
GROUP_WARNS = (
    "a group's first-days ratio warns at most (it moves with the season, between runs "
    "too; a region's own change pages in active_vs_peers / complaints_vs_peers)"
)
#: the interactions counted as ``complaints`` in a run's elapsed days
COMPLAINT = "complaint"


def _elapsed(con: Any, lab: pd.DataFrame, cut: datetime, scored: pd.DataFrame) -> pd.DataFrame:
    """``scored`` customers active at ``cut`` with what they did in its first days
    (``bought``, ``spend``: ``lab``, :func:`~training.datasets.labels` over those days)
    and their ``region`` (from ``customers``, when it has one)."""
    lab = lab[(lab["as_of"] == pd.Timestamp(cut)) & lab["active"]]
    frame = scored.merge(lab[["customer_id", "orders_in_horizon", "spend"]], on="customer_id")
    frame = frame.assign(
        bought=(frame["orders_in_horizon"] > 0).astype("float64"),
        expected_buyer=1.0 - frame["churn_probability"].astype("float64"),
    )
    customers = con.table(CUSTOMERS.name)
    if ATTRIBUTE in customers.columns:
        attr = con.execute(customers.select("customer_id", ATTRIBUTE))
        attr["customer_id"] = attr["customer_id"].astype("string")
        frame = frame.drop(columns=ATTRIBUTE, errors="ignore").merge(
            attr, on="customer_id", how="left"
        )
    return frame


def _complaints(con: Any, cut: datetime, days: int) -> pd.DataFrame:
    """``customer_id, complaints``: complaint interactions in the ``days`` from ``cut``."""
    table = con.table(INTERACTIONS.name)
    start = pd.Timestamp(as_utc(cut))
    window = table.filter(
        (table.kind == COMPLAINT)
        & (table.occurred_at >= start)
        & (table.occurred_at < start + pd.Timedelta(days=days))
    )
    frame = con.execute(window.group_by("customer_id").aggregate(complaints=window.count()))
    frame["customer_id"] = frame["customer_id"].astype("string")
    return frame.astype({"complaints": "float64"})


def _holdout_scored(reference: pd.DataFrame) -> tuple[datetime, pd.DataFrame]:
    """The champion's holdout snapshot within its reference (the latest cutoff), with its
    scores and segments fitted on it as a scoring run fits them on its batch."""
    from features.segments import assign_segments, fit_segments

    cut = pd.Timestamp(reference["as_of"].max())
    rows = reference[reference["as_of"] == cut].reset_index(drop=True)
    rows["customer_id"] = rows["customer_id"].astype("string")
    try:
        segments = assign_segments(rows, fit_segments(rows))
        rows = rows.assign(**{g: segments[g] for g in GROUPS})
    except KeyError:  # a feature set without the RFM / ABC inputs: the base only
        rows = rows.assign(**{g: None for g in GROUPS})
    if "value_mean" not in rows.columns:  # no value champion: its check is skipped
        rows = rows.assign(value_mean=NAN)
    return cut.to_pydatetime(), rows


def check_partial(
    c: Checks,
    con: Any,
    run: RunInfo,
    scored: pd.DataFrame,
    days: int,
    reference: pd.DataFrame,
    horizon: int,
) -> None:
    """A scoring run whose horizon has elapsed by ``days`` (at least ``partial_days``, not
    all of it): what its active customers did in those days (bought, revenue) per unit of
    what the champions predicted for the whole horizon, against the same ratio over the
    same first days of the champion's holdout, per group its own (purchases do not spread
    evenly over a horizon: recency, season; so the expected share of the first days is
    measured, not a pro rata). A shortfall counts only beyond the 95% interval of both
    ratios (delta method over customers), as a share of the holdout's ratio; over the
    base, per ABC tier, RFM segment and region. A group the holdout has fewer than
    ``min_rows`` of has no measured first-days share: it is shown, not judged (another
    population's share is no expectation for it: a dormant segment buys a smaller share
    of its horizon in the first days than the whole base, and paged on every stable run).

    Only the base pages. A group's figures are kept (``monitor_peers``) and, once earlier
    runs of it are recorded (:func:`_own_history`), it is judged against its own pooled
    first days then (:func:`models.monitoring.gap_vs_past`), else against the holdout;
    either way it warns at most (:data:`GROUP_WARNS`): on the million-customer stable
    world a segment's ratio differs several-fold from the holdout's and moves 10-50%
    between monthly runs against a sampling interval of +-1-3%."""
    h_cut, h_rows = _holdout_scored(reference)
    starts = _past_windows(run.as_of, days, c.alerts.past_windows)
    early = labels(con, sorted({run.as_of, h_cut, *starts}), days)  # one pass over orders
    now = _elapsed(con, early, run.as_of, scored)
    now = now.merge(_complaints(con, run.as_of, days), on="customer_id", how="left")
    now = now.assign(complaints=now["complaints"].fillna(0.0), customer=1.0)
    then = _elapsed(con, early, h_cut, h_rows)
    groups = (*GROUPS, ATTRIBUTE) if ATTRIBUTE in now.columns else GROUPS
    columns = ["bought", "expected_buyer", "spend", "value_mean"]
    base = dict(subjects(then, columns, groups))
    tag = (
        f"scoring run {run.run_id} ({run.as_of:%Y-%m-%d}), {days} of {horizon} days elapsed; "
        f"holdout {h_cut:%Y-%m-%d}"
    )
    history = {check: _own_history(c, raw(con), run, check, days) for check in EARLY}
    for subject, part in subjects(now, columns, groups):
        if not len(part):
            continue
        past = base.get(subject)
        for check, (kind, done, predicted) in EARLY.items():
            if part[predicted].isna().all():
                continue
            ratio, var = stats.ratio_variance(part[done], part[predicted])
            known = part[done].notna() & part[predicted].notna()
            total = float(part.loc[known, predicted].sum())
            mine = pd.DataFrame(
                {
                    "group": [subject],
                    "rows": [int(known.sum())],
                    "observed": [ratio * total],
                    "expected": [total],
                    "variance": [var * total**2],
                }
            )
            c.peers.append(
                mine.assign(
                    scoring_run=run.run_id,
                    scoring_as_of=pd.Timestamp(as_utc(run.as_of)),
                    days=days,
                    check=check,
                )
            )
            figures = (
                f"{tag}; {done} {part[done].sum():,.1f} per predicted {predicted} "
                f"{total:,.1f} = {ratio:.3f}"
            )
            whole = subject == "all"
            # a group other than the base warns at most: on a stable world of a million its
            # first-days ratio moves 10-50% between monthly runs (season, campaign phase,
            # the segments refitted on each batch) against a sampling interval of +-1-3%,
            # as it differs from the holdout's of another season (bench.monitoring)
            cap: Level | None = None if whole else "warn"
            own = history[check]
            own = own[own["group"] == subject]
            if not whole and own["rows"].sum() >= c.alerts.min_rows:
                d = stats.gap_vs_past(mine, own).iloc[0]
                then = 1.0 - d["past_gap"]
                excess, half = stats.beyond_noise(
                    max(d["gap"] - d["past_gap"], 0.0), d["gap_sd"] ** 2, d["past_sd"] ** 2
                )
                dates = ", ".join(f"{pd.Timestamp(t):%Y-%m-%d}" for t in own["scoring_as_of"])
                c.add(
                    kind,
                    check,
                    subject,
                    excess / then if then > 0 else NAN,
                    f"{figures}, against its own {then:.3f} over the first days of "
                    f"{len(own)} earlier run(s) of the same champion ({dates}; "
                    f"scaled pro rata to {days} days); beyond the 95% interval +-{half:.3f}; "
                    f"{GROUP_WARNS}",
                    len(part),
                    cap=cap,
                )
                continue
            held = (  # holdout rows of the group the champion scored
                past[past[predicted].notna()] if past is not None else past
            )
            if held is None or len(held) < c.alerts.min_rows:
                c.add(
                    kind,
                    check,
                    subject,
                    NAN,
                    f"{tag}; no earlier run of it recorded, and the holdout has "
                    f"{0 if held is None else len(held)} rows of it < min_rows "
                    f"{c.alerts.min_rows}: its first-days share is not measured, "
                    "not enough data to judge",
                    len(part),
                    judged=False,
                )
                continue
            h_ratio, h_var = stats.ratio_variance(held[done], held[predicted])
            excess, half = stats.beyond_noise(max(h_ratio - ratio, 0.0), var, h_var)
            c.add(
                kind,
                check,
                subject,
                excess / h_ratio if h_ratio > 0 else NAN,
                f"{figures}, holdout {h_ratio:.3f} ({len(held)} rows); beyond the 95% "
                f"interval +-{half:.3f}"
                + ("" if whole else f"; no earlier run of it recorded; {GROUP_WARNS}"),
                len(part),
                cap=cap,
            )
    _complaints_vs_past(c, con, early, starts, days, now, tag)
    if ATTRIBUTE in now.columns:
        _peers(c, raw(con), run, days, now, tag)


def _own_history(c: Checks, db: Any, run: RunInfo, check: str, days: int) -> pd.DataFrame:
    """The figures of ``check`` (:data:`EARLY`) recorded for up to ``peer_history`` earlier
    partly matured scoring runs (``monitor_peers``, :func:`~features.tables.monitoring.
    load_peer_history`) scored by the same champion as ``run`` (another model's
    predictions make another ratio), scaled pro rata to ``days`` elapsed days (monthly
    runs are judged after 28 to 31 days: exact for the expected spend and for rare
    buyers, within ``days / their days`` for frequent ones; ~3% between months)."""
    past = tables.load_peer_history(db, check, run.as_of, c.alerts.peer_history)
    if not len(past):
        return past
    kind = EARLY[check][0]
    same = {
        s
        for s in past["scoring_run"].unique()
        if latest_run(db, s).versions.get(kind) == run.versions.get(kind)
    }
    past = past[past["scoring_run"].isin(same)]
    scale = days / past["days"].astype("float64")
    return past.assign(observed=past["observed"] * scale, variance=past["variance"] * scale**2)


def _past_windows(cut: datetime, days: int, windows: int) -> list[datetime]:
    """The starts of the ``windows`` windows of ``days`` just before ``cut``."""
    return [cut - timedelta(days=days * k) for k in range(1, windows + 1)]


def _complaints_vs_past(
    c: Checks,
    con: Any,
    lab: pd.DataFrame,
    starts: list[datetime],
    days: int,
    now: pd.DataFrame,
    tag: str,
) -> None:
    """The whole base's complaints per active customer in the elapsed days against the
    same figure over the windows of as many days just before the cutoff (``starts``; each
    window's active customers at its start in ``lab``, :func:`~training.datasets.labels`,
    their complaints in it; pooled). A change everywhere (a tripled dropout hazard:
    dissatisfaction complains long before the missing purchases add up) cancels between
    regions, and a first-days ratio against a holdout of another season cannot see the
    ~2% fewer buyers of one period (the season moves it more); the base's own recent past
    can see its complaints. The value is the rise beyond the 95% interval of both rates
    (delta method over customer-windows, taken as independent: approximate, since the
    same customers recur, so the stable worlds of bench.monitor_alarms are its test) as a
    share of the past rate; only a rise counts."""
    if not starts:
        return
    # an export whose interactions begin later has no complaints before: such windows
    # would read as quiet ones and make any complaints now look like a rise
    table = con.table(INTERACTIONS.name)
    first = con.execute(table.occurred_at.min())
    recorded = [s for s in starts if first is not None and pd.Timestamp(as_utc(s)) >= first]
    skipped = len(starts) - len(recorded)
    starts = recorded
    windows = len(starts)
    lab = lab[lab["active"]]
    past: list[pd.Series] = []
    for start in starts:
        ids = lab[lab["as_of"] == pd.Timestamp(as_utc(start))][["customer_id"]]
        if len(ids):
            found = ids.merge(_complaints(con, start, days), on="customer_id", how="left")
            past.append(found["complaints"].fillna(0.0))
    counts = pd.concat(past, ignore_index=True) if past else pd.Series(dtype="float64")
    before = f" ({skipped} window(s) before the first recorded interaction left out)"
    unjudged = None
    if len(counts) < c.alerts.min_rows:
        unjudged = (
            f"{len(counts)} active customer-windows in the {windows} windows of {days} days "
            f"before{before if skipped else ''}: not enough data to judge"
        )
    elif counts.sum() + now["complaints"].sum() == 0:
        unjudged = "no complaints recorded, now or before: nothing to judge"
    if unjudged is not None:
        c.add(
            "churn", "complaints_vs_past", "all", NAN, f"{tag}; {unjudged}", len(now), judged=False
        )
        return
    rate, var = stats.ratio_variance(now["complaints"], np.ones(len(now)))
    p_rate, p_var = stats.ratio_variance(counts, np.ones(len(counts)))
    excess, half = stats.beyond_noise(max(rate - p_rate, 0.0), var, p_var)
    c.add(
        "churn",
        "complaints_vs_past",
        "all",
        excess / p_rate if p_rate > 0 else NAN,
        f"{tag}; complaints per active customer {rate:.4f} ({now['complaints'].sum():,.0f} "
        f"complaints), {p_rate:.4f} in the {len(past)} windows of {days} days before "
        f"({counts.sum():,.0f} over {len(counts):,} active customer-windows, from "
        f"{min(starts):%Y-%m-%d}{before if skipped else ''}); "
        f"{rate / p_rate - 1 if p_rate > 0 else NAN:+.1%}; beyond the 95% interval "
        f"+-{half:.4f}",
        len(now),
    )


def _peers(c: Checks, db: Any, run: RunInfo, days: int, now: pd.DataFrame, tag: str) -> None:
    """Each region's elapsed days against the other regions' customers of the same churn
    risk in the same run (:func:`models.monitoring.peer_shortfall`, strata = deciles of
    the churn probability; each check of :data:`PEERS`): a change in one region, diluted
    in the base and too small for the holdout's capped sample to show, stands out against
    its peers, while season, campaigns and a base-wide bias cancel.
    When earlier scoring runs' figures of the region were recorded (``monitor_peers``, up
    to ``peer_history`` runs), the gap is judged against the region's own pooled gap then
    (:func:`models.monitoring.gap_vs_past`, a difference in differences), so a region that
    always differs from its peers does not page every run; else against the peers alone.
    Those runs count whichever champion scored them (unlike :func:`_own_history`): the gap
    is against same-risk customers of the same run, so a new model moves both sides alike,
    and a monthly retrain would otherwise erase the history.
    The value is -log10 of the one-sided p-value, Holm-adjusted over the regions judged
    (those with ``min_rows``), so the shipped 2.0 pages at a family-wise 1%. The figures
    are kept (:attr:`Checks.peers`) for the next runs."""
    label = GROUP_LABEL[ATTRIBUTE]
    keep = c.alerts.peer_history
    for name, (kind, done, predicted, excess) in PEERS.items():
        rows = now[now[predicted].notna()]
        if done not in rows.columns or not len(rows) or rows[ATTRIBUTE].nunique() < 2:
            continue
        y = -rows[done] if excess else rows[done]
        risk = rows["churn_probability"]
        found = stats.peer_shortfall(y, rows[predicted], rows[ATTRIBUTE], by=risk)
        found[["observed", "expected"]] = found[["observed", "expected"]].abs()
        judged = found["rows"] >= c.alerts.min_rows
        c.peers.append(
            found[["group", "rows", "observed", "expected", "variance"]].assign(
                scoring_run=run.run_id,
                scoring_as_of=pd.Timestamp(as_utc(run.as_of)),
                days=days,
                check=name,
            )
        )
        past = tables.load_peer_history(db, name, run.as_of, keep)
        did = stats.gap_vs_past(found, past, excess).set_index("group")
        own = did["past_runs"].reindex(found["group"]).fillna(0).to_numpy() > 0
        p = found["p"].where(~own, did["p"].reindex(found["group"]).to_numpy())
        found["p_holm"] = stats.holm(p.where(judged))
        when = past.groupby("group")["scoring_as_of"].agg(list).to_dict() if len(past) else {}
        for r, mine in zip(found.itertuples(), own, strict=True):
            # -log10(1) is -0.0: + 0.0 makes it print as 0
            surprise = -np.log10(max(r.p_holm, 1e-300)) + 0.0 if np.isfinite(r.p_holm) else 0.0
            relative = r.observed / r.expected - 1 if r.expected else NAN
            detail = (
                f"{tag}; {done} {r.observed:,.1f} against {r.expected:,.1f} from customers "
                f"of the same churn risk in the other {label}s ({relative:+.1%})"
            )
            if mine:
                d = did.loc[r.group]
                dates = ", ".join(f"{pd.Timestamp(t):%Y-%m-%d}" for t in when[r.group])
                sign = 1.0 if excess else -1.0
                detail += (
                    f"; against its own gap in {int(d['past_runs'])} earlier run(s) ({dates}): "
                    f"{sign * d['past_gap']:+.1%} (sd {d['past_sd']:.1%}) then, "
                    f"{sign * d['gap']:+.1%} (sd {d['gap_sd']:.1%}) now (difference in "
                    f"differences); z {d['z']:.2f}, one-sided p {d['p']:.2g}"
                )
            else:
                detail += (
                    f"; against the peers of this run only (no earlier run of the {label} "
                    f"recorded); z {r.z:.2f}, one-sided p {r.p:.2g}"
                )
            detail += f", Holm over {int(judged.sum())} {label}s {r.p_holm:.2g}"
            c.add(kind, name, f"{label} {r.group}", surprise, detail, int(r.rows))
