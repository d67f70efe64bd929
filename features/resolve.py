"""``rapport resolve``: one person behind many customer records, with the evidence.

1. The customers' identifiers in normal form (:mod:`features.identity`); unusable values
   are null and counted.
2. **Exact rules**: records with the same e-mail, the same personal phone (a mobile) or the
   same loyalty card are one person (a link per record to the first record holding the
   value; rule ``exact:email`` ...), and so are records with the same name with
   postcode unless two of them hold different mobiles or cards (then it is several
   people's, :func:`_unconflicted`). Cookies never link by themselves (devices are
   shared), nor do landlines (households are: :func:`features.identity.links_alone`).
3. **Probabilistic matching** (Splink, a Fellegi-Sunter model, on DuckDB, or on Spark
   with the Spark engine): pairs blocked on
   parts of the e-mail, on the personal phone, the card or the postcode are compared on
   e-mail (exact, 1 or 2 edits, Jaro-Winkler of the part before the ``@``), phone,
   loyalty card, cookie, name (exact, one edit) and postcode -- name and postcode only
   where the e-mails do not already agree (:func:`_emails_alike`); ``m`` is set
   (:data:`M_EMAIL`, :data:`M_SAME`, :data:`M_NAME`, :data:`M_POSTCODE`), so is ``u`` of
   the e-mail's agreement levels and of a name one edit away (:data:`U_EMAIL`,
   :data:`U_NAME_EDIT`), the other ``u`` are estimated by random sampling. A landline is
   not compared (null): a household shares it, so agreeing on it says little. Pairs
   whose evidence (the partial match weights summed, in bits) reaches the threshold are
   links (rule ``splink``) with Splink's match weight and probability and each
   identifier's partial weight (``evidence``).
4. Links are joined by union-find; a cluster's id is its smallest ``customer_id``, so an
   unchanged cluster keeps its id from run to run.

Tables (all with a ``customer_id`` column, so ``rapport forget`` reaches them):
``identity_links`` (``customer_id``, ``other_customer_id``, ``rule``, ``match_weight``,
``match_probability``, ``evidence``, ``resolved_at``; replaced each run), ``identity_clusters``
(``customer_id``, ``cluster_id``, ``resolved_at``; replaced) and ``identity_changes``
(appended: every customer whose cluster changed, ``merge`` into a larger cluster or
``split`` out of one, with the time) -- nothing is merged silently. No identifier value is
written to these tables or to any log: evidence is each identifier's partial match weight.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import ibis
import numpy as np
import pandas as pd
import pyarrow as pa

from features.contract import IDENTIFIER_FIELDS, IDENTIFIERS
from features.identity import DEFAULT_PHONE_REGION, links_alone, normalise, split_name_postcode
from features.warehouse import raw, table_names

#: identifiers whose equality alone makes two records one person (a phone when personal)
EXACT_KINDS = ("email", "phone", "loyalty_card")
#: the name with postcode: links by itself only where its records do not disagree
NAME_POSTCODE = "name_postcode"
#: the default evidence (log2 of the Bayes factor: the sum of the identifiers' partial
#: match weights, without the prior) from which a probabilistic pair is a link. Not the
#: match probability: its prior (that two random records match) falls with the number of
#: records, while the candidates come from blocks whose share of matches does not.
DEFAULT_THRESHOLD = 13.0
#: pairs sampled at random to estimate the u probabilities
U_PAIRS = 2e5
LINKS, CLUSTERS, CHANGES = "identity_links", "identity_clusters", "identity_changes"
#: who an identifier names when several persons hold it and no rule joins them: nobody
AMBIGUOUS = ""


class AmbiguousIdentifierError(LookupError):
    """The identifiers name several customers (a shared cookie, or an e-mail and a phone
    of two different customers); the message names the kinds, never a value."""


@dataclass
class ResolveReport:
    """What one resolution found and recorded (counts only: no identifier)."""

    customers: int
    exact_links: int
    probabilistic_links: int
    clusters: int
    #: customer records in clusters of two or more
    merged_customers: int
    merges: int
    splits: int
    threshold: float
    invalid: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        invalid = ", ".join(f"{k} {n:,}" for k, n in sorted(self.invalid.items())) or "none"
        return [
            f"customers {self.customers:,} -> persons (clusters) {self.clusters:,}; "
            f"{self.merged_customers:,} records in clusters of two or more",
            f"links: exact {self.exact_links:,}, probabilistic {self.probabilistic_links:,} "
            f"(evidence >= {self.threshold} bits)",
            f"changes recorded: {self.merges:,} merged, {self.splits:,} split",
            f"unusable identifiers set to null: {invalid}",
        ]


# --------------------------------------------------------------------------- union-find
class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, int(self.parent[i])
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def clusters_of(ids: pd.Series, links: pd.DataFrame) -> pd.Series:
    """The cluster id of every customer (``ids`` sorted or not): the smallest customer id
    among the records ``links`` (``customer_id``, ``other_customer_id``) join."""
    order = pd.Index(ids.astype(str).sort_values().to_numpy())
    uf = _UnionFind(len(order))
    left = order.get_indexer(links["customer_id"].astype(str))
    right = order.get_indexer(links["other_customer_id"].astype(str))
    for a, b in zip(left, right, strict=True):
        uf.union(int(a), int(b))
    roots = np.array([uf.find(i) for i in range(len(order))])  # root = smallest position
    return pd.Series(order.to_numpy()[roots], index=order, name="cluster_id")


# --------------------------------------------------------------------------- exact
def exact_links(ids: pd.DataFrame) -> pd.DataFrame:
    """Links between records sharing a normalised e-mail, personal phone or loyalty card,
    or a name with postcode whose records hold no two different mobiles or cards
    (:func:`_unconflicted`): each record to the first (smallest id) record with the
    value, once per pair."""
    parts = []
    for kind in (*EXACT_KINDS, NAME_POSTCODE):
        if kind not in ids.columns:
            continue
        held = ids[["customer_id", kind]].dropna().sort_values("customer_id")
        if kind == NAME_POSTCODE:
            held = held[_unconflicted(ids, held)]
        else:
            held = held[links_alone(kind, held[kind])]
        first = held.groupby(kind)["customer_id"].transform("first")
        pairs = held.assign(other_customer_id=first)
        pairs = pairs[pairs["customer_id"] != pairs["other_customer_id"]]
        parts.append(
            pd.DataFrame(
                {
                    "customer_id": pairs["other_customer_id"].to_numpy(),
                    "other_customer_id": pairs["customer_id"].to_numpy(),
                    "rule": f"exact:{kind}",
                }
            )
        )
    links = pd.concat(parts, ignore_index=True)
    # one row per pair: the rules that joined it, together
    return (
        links.groupby(["customer_id", "other_customer_id"], as_index=False)["rule"]
        .agg(lambda r: "+".join(sorted(r)))
        .assign(match_weight=np.nan, match_probability=1.0, evidence="same normalised value")
    )


def _unconflicted(ids: pd.DataFrame, held: pd.DataFrame) -> np.ndarray:
    """Per row of ``held`` (records holding a name with postcode): whether the records
    holding its value are safely one person, no two of them holding different mobiles
    (personal phones) or different loyalty cards. A value they disagree on is several
    people's (a father and son of one name at one address) and, like a shared landline,
    links nobody by itself: Splink weighs it with the rest. A different e-mail is no
    disagreement (people change e-mail: that is the case this rule is for)."""
    rows = ids.set_index("customer_id").loc[held["customer_id"]]
    phone = rows["phone"].astype("string")
    mobile = phone.where(pd.Series(links_alone("phone", phone), index=phone.index))
    facts = pd.DataFrame(
        {
            "value": held[NAME_POSTCODE].to_numpy(),
            "mobile": mobile.to_numpy(),
            "card": rows["loyalty_card"].astype("string").to_numpy(),
        }
    )
    groups = facts.groupby("value").agg(mobiles=("mobile", "nunique"), cards=("card", "nunique"))
    safe = groups.index[(groups["mobiles"] <= 1) & (groups["cards"] <= 1)]
    return facts["value"].isin(safe).to_numpy()


# --------------------------------------------------------------------------- probabilistic
#: m probabilities (the chance of each level for two records of one person), set from how
#: identifiers differ between one person's records rather than learned: a demo-sized
#: warehouse has too few duplicates for expectation maximisation to see every level. The
#: u probabilities (the same for two different persons) are estimated from the data.
M_EMAIL = (0.55, 0.25, 0.05, 0.05, 0.10)  # exact, one edit, two edits, similar user, else
M_SAME = {"phone": 0.8, "loyalty_card": 0.9, "cookie_id": 0.2}
#: m of the name (exact, one edit: a typo, different) and of the postcode (exact,
#: different: moved house, or a typo)
M_NAME = (0.88, 0.08, 0.04)
M_POSTCODE = 0.85
#: u of a name one edit away (the chance for two different persons): set like
#: :data:`U_EMAIL`; exact names and postcodes are common enough for sampling to estimate
U_NAME_EDIT = 1e-4
#: what Splink compares (its partial match weights ``mw_<name>``; the evidence's parts)
COMPARED = ("email", "phone", "loyalty_card", "cookie_id", "name", "postcode")


#: u probabilities of the e-mail's agreement levels (the chance for two different persons),
#: set: random pairs almost never show them, so sampling cannot estimate them at any
#: affordable sample size (it would fall back to defaults on a large warehouse)
U_EMAIL = (1e-7, 1e-5, 1e-4, 1e-3)  # exact, one edit, two edits, similar user


def _emails_alike(jaro_winkler: str) -> str:
    """SQL: two records' e-mails agree at one of the e-mail's levels above "different"
    (``jaro_winkler``: the backend's name of the function). E-mails are made of names, so
    two persons of one name often have such e-mails (``jo.lee12@...``,
    ``jo.lee21@...``): then the name with postcode is not compared (null: no evidence
    either way), only where the e-mails do not already say the name (a changed e-mail, no
    e-mail), so one agreement is not counted twice."""
    return (
        "(damerau_levenshtein(email_l, email_r) <= 2 "
        f"OR {jaro_winkler}(email_user_l, email_user_r) >= 0.9)"
    )


def _level(sql: str, label: str, m: float, u: float | None = None) -> dict[str, Any]:
    level: dict[str, Any] = {
        "sql_condition": sql,
        "label_for_charts": label,
        "m_probability": m,
        "fix_m_probability": True,
    }
    if u is not None:
        level.update(u_probability=u, fix_u_probability=True)
    return level


def _splink_settings(jaro_winkler: str = "jaro_winkler_similarity") -> Any:
    """The model, the same on every backend: ``jaro_winkler`` is the backend's name of
    the Jaro-Winkler similarity (DuckDB's ``jaro_winkler_similarity``, Splink's Spark
    UDF ``jaro_winkler``); ``damerau_levenshtein`` is called so on both."""
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    alike = _emails_alike(jaro_winkler)
    return SettingsCreator(
        link_type="dedupe_only",
        unique_id_column_name="customer_id",
        comparisons=[
            cl.CustomComparison(
                output_column_name="email",
                comparison_levels=[
                    {"sql_condition": "email_l IS NULL OR email_r IS NULL", "is_null_level": True},
                    _level("email_l = email_r", "exact", M_EMAIL[0], U_EMAIL[0]),
                    _level(
                        "damerau_levenshtein(email_l, email_r) <= 1",
                        "one edit",
                        M_EMAIL[1],
                        U_EMAIL[1],
                    ),
                    _level(
                        "damerau_levenshtein(email_l, email_r) <= 2",
                        "two edits",
                        M_EMAIL[2],
                        U_EMAIL[2],
                    ),
                    _level(
                        f"{jaro_winkler}(email_user_l, email_user_r) >= 0.9",
                        "similar user name",
                        M_EMAIL[3],
                        U_EMAIL[3],
                    ),
                    _level("ELSE", "different", M_EMAIL[4]),
                ],
            ),
            *(
                cl.CustomComparison(
                    output_column_name=kind,
                    comparison_levels=[
                        {
                            "sql_condition": f"{kind}_l IS NULL OR {kind}_r IS NULL",
                            "is_null_level": True,
                        },
                        _level(f"{kind}_l = {kind}_r", "same", m),
                        _level("ELSE", "different", 1.0 - m),
                    ],
                )
                for kind, m in M_SAME.items()
            ),
            cl.CustomComparison(
                output_column_name="name",
                comparison_levels=[
                    {  # e-mails alike already say the name: not counted twice
                        "sql_condition": f"name_l IS NULL OR name_r IS NULL OR {alike}",
                        "is_null_level": True,
                    },
                    _level("name_l = name_r", "exact", M_NAME[0]),
                    _level(
                        "damerau_levenshtein(name_l, name_r) <= 1",
                        "one edit",
                        M_NAME[1],
                        U_NAME_EDIT,
                    ),
                    _level("ELSE", "different", M_NAME[2]),
                ],
            ),
            cl.CustomComparison(
                output_column_name="postcode",
                comparison_levels=[
                    {
                        "sql_condition": f"postcode_l IS NULL OR postcode_r IS NULL OR {alike}",
                        "is_null_level": True,
                    },
                    _level("postcode_l = postcode_r", "same", M_POSTCODE),
                    _level("ELSE", "different", 1.0 - M_POSTCODE),
                ],
            ),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("email_domain", "substr(email_user, 1, 4)"),
            block_on("email_domain", "right(email_user, 4)"),
            block_on("phone"),
            block_on("loyalty_card"),
            block_on("postcode"),
        ],
        retain_intermediate_calculation_columns=True,
        retain_matching_columns=False,
    )


def _evidence(pairs: pd.DataFrame) -> list[str]:
    """Each pair's partial match weight per compared identifier (``email +7.9, phone 0.0,
    ...``: what decided it, without any value)."""
    weights = pairs[[f"mw_{k}" for k in COMPARED]].to_numpy(dtype=float)
    return [
        ", ".join(f"{k} {w:+.1f}" for k, w in zip(COMPARED, row, strict=True)) for row in weights
    ]


def probabilistic_links(
    ids: pd.DataFrame, threshold: float, seed: int = 42, api: Any = None
) -> pd.DataFrame:
    """Candidate pairs whose evidence (the sum of Splink's partial match weights, in bits)
    is at least ``threshold``, with Splink's match weight and probability. Splink runs
    on ``api``, a Splink database API (:func:`features.spark.splink_api`: Spark's), or
    None: its own in-memory DuckDB; the same model, training and threshold on both. Its
    logging is silenced (its messages may quote values)."""
    from splink import DuckDBAPI, Linker, block_on

    frame = ids.copy()
    shared = frame["phone"].notna().to_numpy() & ~links_alone("phone", frame["phone"])
    frame.loc[shared, "phone"] = pd.NA  # a household's landline is no evidence
    user = frame["email"].str.split("@").str[0]
    frame["email_user"] = user
    frame["email_domain"] = frame["email"].str.split("@").str[1]
    frame["name"], frame["postcode"] = split_name_postcode(frame[NAME_POSTCODE].astype("string"))
    columns = ["customer_id", *COMPARED, "email_user", "email_domain"]
    frame = frame[columns].astype(object).where(frame[columns].notna(), None)
    empty = pd.DataFrame(
        columns=[
            "customer_id",
            "other_customer_id",
            "rule",
            "match_weight",
            "match_probability",
            "evidence",
        ]
    )
    if len(frame) < 2:
        return empty
    logging.getLogger("splink").setLevel(logging.ERROR)
    db = None
    if api is None:
        db = duckdb.connect()
        api = DuckDBAPI(db)
    try:
        # text columns whatever they hold (all null, DuckDB would read integers)
        typed = pa.Table.from_pandas(
            frame, schema=pa.schema([(c, pa.string()) for c in columns]), preserve_index=False
        )
        df = api.register(typed)
        settings = _splink_settings(api.sql_dialect.jaro_winkler_function_name)
        linker = Linker(df, settings, log_level=None)
        linker.training.estimate_probability_two_random_records_match(
            [block_on("email"), block_on("phone"), block_on("loyalty_card")], recall=0.9
        )
        # no record shares one of those (no duplicates, or only households): Splink's
        # estimate is 0, whose log it cannot take; one pair in all is the floor (the prior
        # moves the reported match weight and probability only, never a link's evidence)
        model = linker._settings_obj
        if not model._probability_two_random_records_match > 0:
            model._probability_two_random_records_match = 2 / (len(frame) * (len(frame) - 1))
        linker.training.estimate_u_using_random_sampling(max_pairs=U_PAIRS, seed=seed)
        pairs = linker.inference.predict().as_pandas_dataframe()
    finally:
        if db is not None:
            db.close()
    if pairs.empty:
        return empty
    partial = pairs[[f"mw_{k}" for k in COMPARED]].to_numpy(dtype=float).sum(axis=1)
    pairs = pairs[partial >= threshold]
    left, right = pairs["customer_id_l"].astype(str), pairs["customer_id_r"].astype(str)
    return pd.DataFrame(
        {
            "customer_id": np.where(left < right, left, right),
            "other_customer_id": np.where(left < right, right, left),
            "rule": "splink",
            "match_weight": pairs["match_weight"].astype(float),
            "match_probability": pairs["match_probability"].astype(float),
            "evidence": _evidence(pairs),
        }
    )


# --------------------------------------------------------------------------- the job
def resolve(
    con: Any,
    now: datetime,
    region: str = DEFAULT_PHONE_REGION,
    threshold: float = DEFAULT_THRESHOLD,
    splink_api: Any = None,
) -> ResolveReport:
    """Resolve the warehouse's customers into persons and record the result (see module).
    ``splink_api``: where Splink runs (:func:`probabilistic_links`; None: DuckDB)."""
    if not threshold > 0.0:
        raise ValueError(f"threshold must be a positive number of bits, got {threshold}")
    db = raw(con)
    customers = db.execute(
        "SELECT customer_id, " + ", ".join(f'"{c}"' for c in IDENTIFIER_FIELDS) + " FROM customers"
    ).df()
    done = normalise(customers, region)
    exact = exact_links(done.frame)
    maybe = probabilistic_links(done.frame, threshold, api=splink_api)
    if len(maybe):  # a pair the exact rules joined already keeps its exact rule
        known = set(zip(exact["customer_id"], exact["other_customer_id"], strict=True))
        pairs = zip(maybe["customer_id"], maybe["other_customer_id"], strict=True)
        maybe = maybe[[p not in known for p in pairs]]
    links = pd.concat([exact, maybe], ignore_index=True).assign(resolved_at=now)
    clusters = clusters_of(done.frame["customer_id"], links)
    merges, splits = _record(db, links, clusters, now)
    sizes = clusters.value_counts()
    return ResolveReport(
        customers=len(clusters),
        exact_links=len(exact),
        probabilistic_links=len(maybe),
        clusters=len(sizes),
        merged_customers=int(sizes[sizes > 1].sum()),
        merges=merges,
        splits=splits,
        threshold=threshold,
        invalid=done.invalid,
    )


def _record(
    db: duckdb.DuckDBPyConnection, links: pd.DataFrame, clusters: pd.Series, now: datetime
) -> tuple[int, int]:
    """Replace links and clusters; append the customers whose cluster changed (a record
    not clustered before counts as alone in its own cluster)."""
    new = pd.DataFrame(
        {"customer_id": clusters.index.to_numpy(), "cluster_id": clusters.to_numpy()}
    )
    new["size"] = new.groupby("cluster_id")["customer_id"].transform("size")
    tables = table_names(db)
    if CLUSTERS in tables:
        old = db.execute(f"SELECT customer_id, cluster_id FROM {CLUSTERS}").df()
    else:
        old = pd.DataFrame(
            {"customer_id": pd.Series(dtype=str), "cluster_id": pd.Series(dtype=str)}
        )
    old["size"] = old.groupby("cluster_id")["customer_id"].transform("size")
    both = new.merge(old, on="customer_id", how="left", suffixes=("", "_old"))
    both["cluster_id_old"] = both["cluster_id_old"].fillna(both["customer_id"])
    both["size_old"] = both["size_old"].fillna(1).astype("int64")
    moved = both[
        (both["cluster_id"] != both["cluster_id_old"]) | (both["size"] != both["size_old"])
    ]
    change = np.select(
        [moved["size"] > moved["size_old"], moved["size"] < moved["size_old"]],
        ["merge", "split"],
        "renamed",
    )
    changes = pd.DataFrame(
        {
            "customer_id": moved["customer_id"].astype(str).to_numpy(),
            "change": change,
            "old_cluster_id": moved["cluster_id_old"].astype(str).to_numpy(),
            "cluster_id": moved["cluster_id"].astype(str).to_numpy(),
            "old_size": moved["size_old"].to_numpy(),
            "size": moved["size"].to_numpy(),
        }
    ).assign(changed_at=now)
    current = new[["customer_id", "cluster_id"]].astype(str).assign(resolved_at=now)
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {CHANGES} (customer_id VARCHAR, change VARCHAR, "
        "old_cluster_id VARCHAR, cluster_id VARCHAR, old_size BIGINT, size BIGINT, "
        "changed_at TIMESTAMPTZ)"
    )
    db.register("_rapport_clusters", current)
    db.register("_rapport_links", links)
    db.register("_rapport_changes", changes)
    try:
        db.execute(f"INSERT INTO {CHANGES} SELECT * FROM _rapport_changes")
        db.execute(
            f"CREATE OR REPLACE TABLE {CLUSTERS} AS SELECT customer_id::VARCHAR AS customer_id, "
            "cluster_id::VARCHAR AS cluster_id, resolved_at::TIMESTAMPTZ AS resolved_at "
            "FROM _rapport_clusters"
        )
        db.execute(
            f"CREATE OR REPLACE TABLE {LINKS} AS SELECT customer_id::VARCHAR AS customer_id, "
            "other_customer_id::VARCHAR AS other_customer_id, rule::VARCHAR AS rule, "
            "match_weight::DOUBLE AS match_weight, match_probability::DOUBLE AS "
            "match_probability, evidence::VARCHAR AS evidence, resolved_at::TIMESTAMPTZ AS "
            "resolved_at FROM _rapport_links"
        )
    finally:
        for name in ("_rapport_clusters", "_rapport_links", "_rapport_changes"):
            db.unregister(name)
    return int((change == "merge").sum()), int((change == "split").sum())


# --------------------------------------------------------------------------- owners
def identifier_owners(
    con: Any, region: str = DEFAULT_PHONE_REGION, as_of: datetime | None = None
) -> dict[str, pd.Series]:
    """Who each identifier names, per kind: normal form -> customer id, or
    :data:`AMBIGUOUS`. The one answer the online index (by keyed hash) and ingest (event
    files naming their customer by an identifier) both use.

    Every customer's identifiers (those who signed up before ``as_of``; None: all) name
    the customer's cluster (``identity_clusters``, the latest resolution: its id, unless
    that record was forgotten) or, never resolved, the customer. A value held by several
    clusters names the smallest when its kind links records by itself (an e-mail, a
    loyalty card: the exact rules make them one person), and nobody (:data:`AMBIGUOUS`)
    when it does not (a cookie, a shared phone, a name with postcode: devices and
    households are shared, and a name with postcode several persons hold -- resolution
    did not join them -- is a father and son of one name at one address).
    ``con``: the warehouse, or its DuckDB connection (ingest's, inside its transaction)."""
    db = con if isinstance(con, duckdb.DuckDBPyConnection) else raw(con)
    tables = table_names(db)
    owner, join = "c.customer_id", ""
    if CLUSTERS in tables:  # a cluster id is a customer id; a forgotten one names nobody
        join = (
            f"LEFT JOIN {CLUSTERS} k ON k.customer_id = c.customer_id "
            "LEFT JOIN customers o ON o.customer_id = k.cluster_id"
        )
        owner = "coalesce(o.customer_id, c.customer_id)"
    columns = ", ".join(f'c."{column}"' for column in IDENTIFIER_FIELDS)
    where, params = "", {}
    if as_of is not None:
        where, params = "WHERE c.signup_at < $as_of", {"as_of": as_of}
    frame = db.execute(
        f"SELECT c.customer_id, {owner} AS owner, {columns} FROM customers c {join} {where}",
        params,
    ).df()
    done = normalise(frame, region).frame
    done["owner"] = frame["owner"].astype("string").to_numpy()
    out: dict[str, pd.Series] = {}
    for kind in IDENTIFIERS:
        held = done[["owner", kind]].dropna().drop_duplicates()
        owners = held.groupby(kind)["owner"].agg(["min", "nunique"])
        shared = owners["nunique"] > 1
        if kind not in EXACT_KINDS:  # a shared cookie, name with postcode: nobody
            owners.loc[shared, "min"] = AMBIGUOUS
        elif kind == "phone" and shared.any():  # a household's phone names nobody
            linking = links_alone(kind, pd.Series(owners.index[shared], dtype="string"))
            owners.loc[owners.index[shared][~linking], "min"] = AMBIGUOUS
        out[kind] = owners["min"].astype("string")
    return out


def named_owner(kinds: Sequence[str], found: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The customer an event's identifiers name, and the kind that named them: ``kinds``
    are the event's identifier kinds (in order), ``found`` the owners of those known
    (:func:`identifier_owners`, :data:`AMBIGUOUS` included). None when none is known;
    :class:`AmbiguousIdentifierError` when they name several customers or only nobody."""
    named = {found[k]: k for k in reversed(kinds) if k in found}
    known = {customer: kind for customer, kind in named.items() if customer != AMBIGUOUS}
    if len(known) > 1 or (not known and AMBIGUOUS in named):
        listed = ", ".join(k for k in kinds if k in found)
        raise AmbiguousIdentifierError(
            f"ambiguous identifiers: the identifiers ({listed}) name more than one customer "
            "(a shared device or household phone, or different persons'); send customer_id"
        )
    if not known:
        return None, None
    ((customer, kind),) = known.items()
    return customer, kind


# --------------------------------------------------------------------------- persons
def clusters_as_of(
    con: Any, as_of: datetime | None = None, of: Sequence[str] | None = None
) -> pd.DataFrame:
    """``customer_id`` -> ``cluster_id`` as resolution knew it at ``as_of``: each
    customer's latest recorded change (``identity_changes``) at or before ``as_of``; a
    customer without one was alone. Point in time: a merge learned at t changes nothing
    as of an earlier instant. ``as_of=None``: the current ``identity_clusters``.

    ``of``: only the records ever placed in these clusters (all of the clusters' records
    at ``as_of`` among them), without grouping every change: the monitor asks for a few
    sampled persons per instant (5 clusters of 110,000 changes: 11 ms, all: 92 ms)."""
    db = raw(con)
    tables = table_names(db)
    if as_of is None:
        if CLUSTERS not in tables:
            return pd.DataFrame({"customer_id": [], "cluster_id": []}, dtype="string")
        return db.execute(f"SELECT customer_id, cluster_id FROM {CLUSTERS}").df()
    if CHANGES not in tables:
        return pd.DataFrame({"customer_id": [], "cluster_id": []}, dtype="string")
    if of is None:
        return db.execute(clusters_as_of_sql("$as_of"), {"as_of": as_of}).df()
    ever = f"SELECT customer_id FROM {CHANGES} WHERE cluster_id IN (SELECT unnest($of))"
    sql = clusters_as_of_sql("$as_of", f"customer_id IN ({ever})")
    return db.execute(sql, {"as_of": as_of, "of": [str(i) for i in of]}).df()


def clusters_as_of_sql(as_of: str, only: str = "TRUE") -> str:
    """The query of :func:`clusters_as_of` (needs ``identity_changes``), the instant given
    as SQL (a parameter such as ``$as_of``), for callers that read it inside their own
    query (the online records of merged persons, :mod:`features.online.materialize`);
    ``only``: a condition on the changes read (SQL)."""
    return (
        f"SELECT customer_id, arg_max(cluster_id, changed_at) AS cluster_id FROM {CHANGES} "
        f"WHERE changed_at <= {as_of} AND ({only}) GROUP BY customer_id"
    )


#: the tables a person's history is made of (customer_id rewritten to the person's)
HISTORY_TABLES = ("orders", "interactions", "campaign_log")


def person_tables(
    tables: Mapping[str, Any],
    clusters: pd.DataFrame,
    ids: Sequence[str] | None = None,
    keep_members: bool = False,
) -> dict[str, Any]:
    """The contract tables (Ibis tables by name: ``customers`` and :data:`HISTORY_TABLES`)
    with one customer per person: every event of a cluster's records under its cluster
    id, the person's ``customers`` row that of the cluster id with the earliest
    ``signup_at`` of its records. ``clusters``: :func:`clusters_as_of` (customers absent
    from it stay alone). The one home of the merge, for the batch
    (:func:`merge_histories`) and the monitor's rebuild of live vectors.

    ``keep_members``: as the online records hold them
    (:func:`features.online.materialize.records_sql`) -- only clusters whose id is a known
    customer merge, and every other record of the cluster keeps its own row and events
    too; otherwise the members are gone, and a cluster whose id is no customer takes its
    smallest record's row. ``ids``: only these customers' (persons') rows, reading only
    their records' rows."""
    m = clusters[["customer_id", "cluster_id"]].astype(str)
    if keep_members:
        m = m[m["customer_id"] != m["cluster_id"]]
    if ids is not None:
        wanted = [str(i) for i in ids]
        m = m[m["cluster_id"].isin(wanted)]
        read = sorted({*wanted, *m["customer_id"]})
        tables = {n: t.filter(t.customer_id.isin(read)) for n, t in tables.items()}
    mapping = ibis.memtable(
        pa.table(
            {
                "_member": pa.array(m["customer_id"].tolist(), pa.string()),
                "_person": pa.array(m["cluster_id"].tolist(), pa.string()),
            }
        )
    )
    customers = tables["customers"]
    if keep_members:  # only clusters whose id is a known customer (as materialize)
        mapping = mapping.semi_join(customers, mapping._person == customers.customer_id)
    out = {"customers": _person_customers(customers, mapping, keep_members)}
    for name in HISTORY_TABLES:
        t = tables[name]
        if keep_members:  # each member's event also under its cluster id
            again = t.inner_join(mapping, t.customer_id.cast("string") == mapping._member)
            again = again.mutate(customer_id=again._person).select(*t.columns)
            out[name] = t.union(again, distinct=False)
        else:
            j = t.left_join(mapping, t.customer_id.cast("string") == mapping._member)
            j = j.mutate(customer_id=ibis.coalesce(j._person, j.customer_id.cast("string")))
            out[name] = j.select(*t.columns)
    if ids is not None:
        out = {n: t.filter(t.customer_id.isin(wanted)) for n, t in out.items()}
    return out


def _person_customers(customers: Any, mapping: Any, keep_members: bool) -> Any:
    """The ``customers`` rows of :func:`person_tables`."""
    j = customers.left_join(mapping, customers.customer_id.cast("string") == mapping._member)
    person = ibis.coalesce(j._person, j.customer_id.cast("string"))
    if keep_members:  # the cluster id's row, with its members' first signup
        first = j.group_by(person=person).aggregate(first=j.signup_at.min())
        k = customers.left_join(first, customers.customer_id.cast("string") == first.person)
        return k.mutate(signup_at=ibis.coalesce(k.first, k.signup_at)).select(*customers.columns)
    j = j.mutate(_p=person)
    order = [ibis.desc(j.customer_id.cast("string") == j._p), j.customer_id]
    j = j.mutate(
        signup_at=j.signup_at.min().over(group_by=j._p),
        _n=ibis.row_number().over(group_by=j._p, order_by=order),
    )
    return j.filter(j._n == 0).mutate(customer_id=j._p).select(*customers.columns)


def merge_histories(con: Any, target: Any, clusters: pd.DataFrame) -> int:
    """Write into the warehouse ``target`` (empty) the contract tables of ``con`` with one
    customer per person (:func:`person_tables`): every event's ``customer_id`` replaced by
    its cluster's, and one ``customers`` row per cluster. ``clusters``:
    :func:`clusters_as_of`. What features and labels of resolved persons are computed from
    (the churn AUC with and without resolution,
    ``tests/features/test_resolution_effect.py``). Returns the number of persons."""
    out = raw(target)
    names = ("customers", *HISTORY_TABLES)
    merged = person_tables({n: con.table(n) for n in names}, clusters)
    frames = {name: merged[name].to_pyarrow() for name in names}
    for name, frame in frames.items():
        out.register("_rapport_frame", frame)
        try:
            out.execute(f"CREATE TABLE {name} AS SELECT * FROM _rapport_frame")
        finally:
            out.unregister("_rapport_frame")
    return int(frames["customers"].num_rows)
