"""How good is an NBA policy: off-policy estimates on logged decisions, uplift ranking
metrics and the holdout's diagnostic plots.

Why a module of its own: these tables are read-only judgements of a fitted
:class:`models.nba.NbaModel`; the train, evaluate and promote jobs in :mod:`training.nba`
all compute them, and the quality tests check them directly.

**Reward** (off-policy evaluation and the gate): ``revenue x margin_rate - cost`` of the
logged action, per decision -- the margin earned on the response revenue minus what the
contact cost. ``margin_rate`` is one rate for every action (default: the mean margin rate
of the catalog's actions other than the control), so that the control's revenue counts
like everyone else's. Policies are compared by their estimated mean reward per decision
(IPS, self-normalised IPS, doubly robust with the candidate's outcome models as reward
model; 95% bootstrap intervals) for the candidate (greedy), the current champion
(greedy), uniform random over the allowed actions and every single action for everyone
(where allowed, else no action).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from features.contract import NO_ACTION
from models.catalog import Catalog
from models.nba import NbaModel
from models.ope import (
    OPEResult,
    encode_actions,
    evaluate_policy,
    random_policy,
    single_action_policy,
)
from models.policy import Arbitration
from models.propensity import Overlap, frame_overlap
from models.uplift import uplift_curve


# --------------------------------------------------------------------------- OPE
def default_margin_rate(catalog: Catalog) -> float:
    """Mean margin rate of the catalog's actions other than the control."""
    rates = [a.margin_rate for a in catalog.actions if a.id != NO_ACTION]
    return float(np.mean(rates))


def rewards(frame: pd.DataFrame, catalog: Catalog, margin_rate: float) -> np.ndarray:
    """Per logged decision: ``revenue x margin_rate - cost`` of the logged action."""
    cost = {a.id: a.cost for a in catalog.actions}
    logged = frame["action"].astype(str)
    unknown = sorted(set(logged) - set(cost))
    if unknown:
        raise ValueError(f"logged actions {unknown} are not in catalog {catalog.version}")
    revenue = frame["revenue"].fillna(0.0).to_numpy(dtype="float64")
    return revenue * margin_rate - logged.map(cost).to_numpy(dtype="float64")


def reward_model(model: NbaModel, frame: pd.DataFrame, margin_rate: float) -> np.ndarray:
    """``q[n, K]``: predicted revenue x margin - cost per catalog action (control's revenue
    for an action the model never saw logged)."""
    outcomes = model.uplift.predict_outcome(frame[model.feature_names])
    control = outcomes[model.uplift.control][1]
    cols = [
        np.asarray(outcomes[a.id][1] if a.id in outcomes else control) * margin_rate - a.cost
        for a in model.catalog.actions
    ]
    return np.stack(cols, axis=1)


def greedy_matrix(result: Arbitration, actions: Sequence[str]) -> np.ndarray:
    """One-hot ``[n, K]`` of the greedy choice, columns in ``actions`` order."""
    chosen = encode_actions(result.best(), actions)
    pi = np.zeros((len(chosen), len(actions)))
    pi[np.arange(len(chosen)), chosen] = 1.0
    return pi


@dataclass
class PolicyValues:
    """Estimated mean reward per decision of several policies on one holdout."""

    results: dict[str, dict[str, OPEResult]]
    n: int
    margin_rate: float
    observed: float
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: where the propensities come from, and how well the logged actions overlap
    overlap: Overlap | None = None

    def table(self) -> pd.DataFrame:
        rows = {}
        for policy, by_method in self.results.items():
            row: dict[str, float] = {}
            for method, r in by_method.items():
                row[method] = r.estimate
                row[f"{method}_lo"] = r.lo
                row[f"{method}_hi"] = r.hi
            row["ess"] = next(iter(by_method.values())).effective_sample_size
            rows[policy] = row
        return pd.DataFrame(rows).T

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for policy, by_method in self.results.items():
            for method, r in by_method.items():
                key = f"ope_{policy}_{method}"
                out |= {key: r.estimate, f"{key}_lo": r.lo, f"{key}_hi": r.hi}
        out["ope_logged_mean_reward"] = self.observed
        if self.overlap is not None:
            out |= self.overlap.metrics()
        return out

    def summary(self) -> str:
        label = {k: f"{k} v{v}" for k, v in self.versions.items()}
        table = self.table().rename(index=label)
        shown = []
        for method in ("ips", "snips", "dr"):
            if method in table.columns:
                table[method.upper()] = [
                    f"{e:8.3f} [{lo:7.3f}, {hi:7.3f}]"
                    for e, lo, hi in zip(
                        table[method], table[f"{method}_lo"], table[f"{method}_hi"], strict=True
                    )
                ]
                shown.append(method.upper())
        table["ESS"] = table["ess"].map(lambda v: f"{v:,.0f}")
        lines = [
            f"policy value on the holdout ({self.n:,} logged decisions): mean reward per "
            f"decision = revenue x {self.margin_rate:g} - action cost, 95% bootstrap intervals",
            "\n".join("  " + line for line in table[[*shown, "ESS"]].to_string().splitlines()),
            f"  logged policy (observed): {self.observed:.3f}",
        ]
        if self.overlap is not None and self.overlap.estimated:
            lines.append(f"  {self.overlap.summary()}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def evaluate_policies(
    candidate: NbaModel,
    frame: pd.DataFrame,
    champion: NbaModel | None = None,
    margin_rate: float | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> PolicyValues:
    """IPS / SNIPS / DR of the candidate, champion, random and single-action policies."""
    catalog = candidate.catalog
    margin = default_margin_rate(catalog) if margin_rate is None else margin_rate
    actions = catalog.ids
    logged = encode_actions(frame["action"].astype(str).to_numpy(), actions)
    p = frame["propensity"].to_numpy(dtype="float64")
    r = rewards(frame, catalog, margin)
    q = reward_model(candidate, frame, margin)
    result = candidate.arbitrate(frame)
    policies: dict[str, np.ndarray] = {"candidate": greedy_matrix(result, actions)}
    notes = []
    if champion is not None:
        try:
            policies["champion"] = greedy_matrix(champion.arbitrate(frame), actions)
        except (KeyError, ValueError) as exc:
            notes.append(f"champion not evaluated: {exc}")
    policies["random"] = random_policy(result.allowed)
    for j, action in enumerate(actions):
        policies[f"always {action}"] = single_action_policy(j, result.allowed)
    results = {
        name: evaluate_policy(pi, logged, p, r, q, n_boot=n_boot, seed=seed)
        for name, pi in policies.items()
    }
    overlap = frame_overlap(frame)
    return PolicyValues(results, len(frame), margin, float(r.mean()), notes=notes, overlap=overlap)


# --------------------------------------------------------------------------- uplift metrics
def uplift_metrics(model: NbaModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Per action on logged rows: Qini and AUUC of the conversion uplift and Qini of the
    revenue uplift (IPW with the logged propensities; action vs control rows only)."""
    pred = model.predict(frame)
    a = frame["action"].astype(str).to_numpy()
    p = frame["propensity"].to_numpy(dtype="float64")
    y = frame["outcome"].to_numpy(dtype="float64")
    rev = frame["revenue"].fillna(0.0).to_numpy(dtype="float64")
    rows = {}
    for j, action in enumerate(pred.actions):
        sel = (a == action) | (a == model.uplift.control)
        t = a[sel] == action
        if t.all() or not t.any():
            continue
        conv, revenue = pred.incremental_conversion[sel, j], pred.incremental_revenue[sel, j]
        curve = uplift_curve(conv, t, y[sel], p[sel])
        revenue_curve = uplift_curve(revenue, t, rev[sel], p[sel])
        rows[action] = {
            "qini": curve.qini,
            "auuc": curve.auuc,
            "qini_revenue": revenue_curve.qini,
            "auuc_revenue": revenue_curve.auuc,
            "rows": float(sel.sum()),
        }
    return pd.DataFrame(rows).T


# --------------------------------------------------------------------------- plots
def uplift_curves_figure(model: NbaModel, frame: pd.DataFrame) -> Figure:
    """IPW uplift curves (incremental revenue per customer) per action on the holdout."""
    pred = model.predict(frame)
    a = frame["action"].astype(str).to_numpy()
    p = frame["propensity"].to_numpy(dtype="float64")
    rev = frame["revenue"].fillna(0.0).to_numpy(dtype="float64")
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    for j, action in enumerate(pred.actions):
        sel = (a == action) | (a == model.uplift.control)
        t = a[sel] == action
        if t.all() or not t.any():
            continue
        curve = uplift_curve(pred.incremental_revenue[sel, j], t, rev[sel], p[sel])
        ax.plot(curve.fraction, curve.gain, label=action)
        ax.plot([0, 1], [0, curve.gain[-1]], linestyle=":", color=ax.lines[-1].get_color())
    ax.set(
        title="Uplift curves (holdout, IPW)",
        xlabel="share targeted, by predicted revenue uplift",
        ylabel="incremental revenue per customer",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def action_mix(model: NbaModel, frame: pd.DataFrame, by: str = "rfm_segment") -> pd.DataFrame:
    """Share of each greedy action per segment."""
    chosen = pd.Series(model.arbitrate(frame).best(), index=frame.index, name="action")
    mix = pd.crosstab(frame[by].astype(str), chosen, normalize="index")
    return mix.reindex(columns=[a for a in model.catalog.ids if a in mix.columns])


def action_mix_figure(mix: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(7.5, 0.35 * len(mix) + 1.8))
    ax = fig.add_subplot()
    left = np.zeros(len(mix))
    for action in mix.columns:
        ax.barh(list(mix.index), mix[action].to_numpy(), left=left, label=action)
        left += mix[action].to_numpy()
    ax.set(title="Greedy action mix by RFM segment (holdout)", xlabel="share of decisions")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=3, fontsize=8)
    return fig
