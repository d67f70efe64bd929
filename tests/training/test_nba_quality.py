"""Next-best-action quality against the demo's ground truth (fixed seeds; run with ``-s``).

The NBA model is trained exactly as ``rapport train nba`` does (decisions before the truth
cutoff, features and churn / value scores as of each decision's week, segments by one
segment model -- here the truth cutoff snapshot's --, the latest weeks held out), then
judged at the truth cutoff on every customer known then, with the true per-action effects
of ``truth_actions``:

1. the learned greedy policy's true value (true incremental revenue x margin - cost of the
   chosen action, summed over customers) against the oracle (the truly best allowed action
   per customer), uniform random over the allowed actions and each single action for all;
2. off-policy evaluation: a logged data set simulated at the truth cutoff from the truth
   (known, attribute-dependent propensities) whose policy values are known exactly; the DR
   interval of the learned policy's value must contain its true value.

The test catalog is the packaged one with every action valued as ``incremental_revenue``:
the truth measures incremental revenue, and retention actions valued by *retained value*
(churn reduction x customer value) would optimise an objective the evaluator does not
score. With one objective, learner and evaluator agree on what "best" means.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import yaml

from features.batch import build
from features.contract import NO_ACTION
from features.ingest import discover_files, ingest
from features.segments import fit_version
from features.spec import default_spec
from features.warehouse import connect
from models.catalog import Catalog, parse_catalog
from models.nba import NbaModel
from models.ope import encode_actions, evaluate_policy
from models.propensity import fill_propensities, frame_overlap
from rapport.demo_data import generate, write
from rapport.truth import truth_matrices, truth_policy_values
from training.datasets import Window, build_training_set
from training.jobs import fit_model
from training.nba import fit_nba, train_nba_from_table
from training.nba_data import NbaData, build_nba_data, customer_frame, score_enricher
from training.nba_evaluation import default_margin_rate, reward_model

END = datetime(2025, 1, 1, tzinfo=UTC)
#: uplift is a small signal in noisy revenue: 20k customers give ~40k logged decisions
CUSTOMERS, SEED = 20_000, 7
PARAMS = {"num_threads": 1}


def revenue_catalog() -> Catalog:
    """The packaged catalog with every action valued as incremental revenue x margin."""
    from importlib import resources

    raw = yaml.safe_load(resources.files("models").joinpath("default_catalog.yaml").read_text())
    for action in raw["actions"]:
        action["value_kind"] = "incremental_revenue"
    return parse_catalog(yaml.safe_dump(raw), source="test catalog")


@dataclass
class World:
    data: NbaData
    model: NbaModel
    frame: pd.DataFrame  # customers at the truth cutoff: features, scores, segments
    truth: pd.DataFrame


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    folder = tmp_path_factory.mktemp("nba-quality")
    demo = generate(CUSTOMERS, seed=SEED, end=END)
    con = connect(folder / "warehouse.duckdb")
    ingest(con, discover_files(write(demo, folder / "files")["customers"].parent), now=END)
    ts = build_training_set(con, Window(horizon_days=demo.horizon_days))
    # the segment model of the snapshot at the truth cutoff, where the policy is judged
    snapshot = build(con, demo.truth_as_of)
    segments = fit_version(snapshot, demo.truth_as_of, default_spec().version).model
    churn, value = fit_model("churn", ts, PARAMS), fit_model("value", ts, PARAMS)
    enrich = score_enricher(churn, value, segments)
    data = build_nba_data(con, demo.truth_as_of, enrich)
    model = fit_nba(data.part("train"), data.feature_names, revenue_catalog(), params=PARAMS)
    frame = customer_frame(con, demo.truth_as_of, enrich)
    print(f"\n{data.counts()} truth customers {len(frame):,}")
    return World(data, model, frame, demo.truth_actions)


def test_learned_policy_reaches_85_percent_of_the_oracle(world: World) -> None:
    values = truth_policy_values(world.model, world.frame, world.truth)
    print(f"\n{values.summary()}")
    print({k: round(v, 4) for k, v in values.values.items()})
    oracle, learned = values.values["oracle"], values.values["learned"]
    best_name, best = values.best_single
    assert oracle > 0
    assert learned >= 0.85 * oracle
    assert learned > values.values["random"] + 0.25 * oracle
    assert learned > best + 0.05 * oracle, best_name


@dataclass
class TruthLog:
    """A campaign logged at the truth cutoff from the truth, and the learned policy on it."""

    pi: np.ndarray  # the learned greedy policy, one-hot [n, K]
    drawn: np.ndarray  # logged action indices
    propensity: np.ndarray  # the logging policy's true probability of the drawn action
    reward: np.ndarray
    q: np.ndarray  # the learned model's reward model
    true_value: float  # true mean reward per decision of the learned policy


@pytest.fixture(scope="module")
def truth_log(world: World) -> TruthLog:
    """Log a campaign at the truth cutoff from the truth itself (a targeted, non-uniform
    logging policy with known propensities)."""
    model, frame = world.model, world.frame
    catalog = model.catalog
    actions = catalog.ids
    truth = truth_matrices(world.truth, frame["customer_id"], actions)
    margin = default_margin_rate(catalog)
    cost = np.array([a.cost for a in catalog.actions])
    rng = np.random.default_rng(11)
    n, k = len(frame), len(actions)
    # the logging policy: non-uniform, depending on the preferred channel and recency
    logits = np.zeros((n, k))
    email = np.array([a.channel == "email" for a in catalog.actions])
    prefers_email = (frame["preferred_channel"].astype(str) == "email").to_numpy()
    lapsed = frame["days_since_last_order"].fillna(999).to_numpy() > 90
    logits[:, email] += 0.8 * prefers_email[:, None]
    logits[:, actions.index("winback_email")] += 1.0 * lapsed
    logits[:, actions.index(NO_ACTION)] += 0.7
    support = truth["consent_ok"].copy()
    support[:, actions.index(NO_ACTION)] = True
    weight = np.where(support, np.exp(logits), 0.0)
    logging = weight / weight.sum(axis=1, keepdims=True)
    drawn = (logging.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1)
    drawn = np.minimum(drawn, k - 1)
    rows = np.arange(n)
    p_convert = np.nan_to_num(truth["p_convert_treated"])
    expected = np.nan_to_num(truth["expected_revenue_treated"])
    converts = rng.random(n) < p_convert[rows, drawn]
    basket = np.divide(
        expected[rows, drawn],
        p_convert[rows, drawn],
        out=np.zeros(n),
        where=p_convert[rows, drawn] > 0,
    )
    revenue = np.where(converts, basket * rng.gamma(4.0, 0.25, n), 0.0)
    reward = revenue * margin - cost[drawn]

    # the learned greedy policy (a choice the truth's consent forbids becomes no action)
    chosen = encode_actions(model.arbitrate(frame).best(), actions)
    chosen = np.where(support[rows, chosen], chosen, actions.index(NO_ACTION))
    pi = np.zeros((n, k))
    pi[rows, chosen] = 1.0
    true_value = float((pi * (expected * margin - cost)).sum(axis=1).mean())
    q = reward_model(model, frame, margin)
    print(f"\ntrue value of the learned policy {true_value:.4f} per decision (n={n:,})")
    return TruthLog(pi, drawn, logging[rows, drawn], reward, q, true_value)


def _show(label: str, results: dict) -> None:
    for name, r in results.items():
        print(
            f"  {label} {name:6s} {r.estimate:.4f} [{r.lo:.4f}, {r.hi:.4f}] "
            f"ESS {r.effective_sample_size:,.0f}"
        )


def test_dr_interval_covers_the_true_value_of_the_learned_policy(truth_log: TruthLog) -> None:
    log = truth_log
    results = evaluate_policy(
        log.pi, log.drawn, log.propensity, log.reward, log.q, n_boot=300, seed=3
    )
    _show("logged", results)
    dr = results["dr"]
    assert dr.lo <= log.true_value <= dr.hi
    assert dr.hi - dr.lo < results["ips"].hi - results["ips"].lo  # DR is the tighter one


def test_dr_on_estimated_propensities_covers_the_true_value(
    world: World, truth_log: TruthLog
) -> None:
    """The same log exported without its propensities: they are estimated from the
    customers' features (cross-fitted, calibrated) and the DR interval still holds."""
    log = truth_log
    actions = np.asarray(world.model.catalog.ids)[log.drawn]
    unlogged = world.frame.assign(action=actions, propensity=np.nan)
    filled = fill_propensities(unlogged, world.data.feature_names, seed=0)
    overlap = frame_overlap(filled)
    print(f"\n{overlap.summary()}")
    error = np.abs(filled["propensity"].to_numpy() - log.propensity)
    print(f"mean absolute error of the estimated propensities {error.mean():.4f}")
    results = evaluate_policy(
        log.pi, log.drawn, filled["propensity"].to_numpy(), log.reward, log.q, n_boot=300, seed=3
    )
    _show("estimated", results)
    dr = results["dr"]
    assert dr.lo <= log.true_value <= dr.hi
    assert not overlap.poor


def test_a_table_from_elsewhere_trains_and_evaluates(world: World) -> None:
    """``train_nba_from_table``: any (features, action, propensity, outcome, revenue) table."""
    table = world.data.frame.head(12_000)
    model, values = train_nba_from_table(
        table, world.data.feature_names, revenue_catalog(), time_column="decided_at", n_boot=50
    )
    assert set(model.uplift.actions_) == set(revenue_catalog().ids) - {NO_ACTION}
    assert {"candidate", "random", f"always {NO_ACTION}"} <= set(values.results)
    assert values.n == 12_000 - round(12_000 * 0.8)
    print(f"\n{values.summary()}")
