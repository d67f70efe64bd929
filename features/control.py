"""The always-on control group: who gets no policy action, and the propensity to log.

A customer is in the control group when a hash of ``(salt, customer_id)`` falls below
``share``: every path (batch scores, ``/score``, ``/score_batch``, target lists) computes
the same answer from the same two numbers, with no table lookup and no coordination.
A new salt (``rapport control --reshuffle``) draws a new, independent group; raising the
share only adds customers (the hash is fixed for a salt), lowering it only removes some.

**The propensity rule.** With the control group the logging process is a mixture: a
customer is in control with probability ``share`` (independently of their features:
the hash does not read them) and then gets ``no_action``; otherwise the policy draws
action ``a`` with probability ``p(a|x)``. The probability that a decision for features
``x`` logs action ``a`` is therefore

    mu(a|x) = share * [a == no_action] + (1 - share) * p(a|x)

and that is the propensity every decision logs, whatever its group (a control
decision logs ``share + (1 - share) * p(no_action|x)``, the same number a treated
``no_action`` decision for the same ``x`` logs). IPS, SNIPS and DR over the action alone
(:mod:`models.ope`) then stay unbiased over *all* logged rows, control included; logging
``1`` for control rows and ``(1 - share) p`` for treated ones would count ``no_action``
twice (``tests/models/test_ope.py`` shows both). ``p(a|x) = mu(a|x)`` when ``share`` is 0.
The decision's ``group`` column keeps the conditional view: control rows are
``no_action`` with probability 1 given the group.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import overload

import numpy as np

from features.contract import CONTROL, EXPLORE, TREATED

#: the share of customers in the control group until someone changes it
DEFAULT_SHARE = 0.05
#: the salt until the first reshuffle (fixed, so a fresh workspace agrees with itself)
DEFAULT_SALT = "rapport-initial"
#: the largest share accepted: a control group above half is a policy switched off
MAX_SHARE = 0.5
_SCALE = float(2**64)


def bucket(salt: str, customer_id: str) -> float:
    """The customer's position in [0, 1) for this salt (uniform over customers)."""
    digest = hashlib.blake2b(f"{salt}\x1f{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def new_salt() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class ControlGroup:
    """The share of customers held out of every policy action, and the salt that picks them."""

    share: float = DEFAULT_SHARE
    salt: str = DEFAULT_SALT

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= MAX_SHARE:
            raise ValueError(f"control share must be in [0, {MAX_SHARE}], got {self.share}")
        if not self.salt:
            raise ValueError("control salt must not be empty")

    def contains(self, customer_id: str) -> bool:
        """Is this customer in the control group? (The live path: one hash.)"""
        return self.share > 0 and bucket(self.salt, str(customer_id)) < self.share

    def mask(self, customer_ids: Iterable[object]) -> np.ndarray:
        """Boolean array: which of these customers are in the control group (the buckets
        of :func:`bucket`, bit for bit; the digests are joined and read by numpy, ~4x
        faster than one :func:`bucket` call per customer on a million)."""
        listed = customer_ids.tolist() if hasattr(customer_ids, "tolist") else customer_ids
        ids = [str(c) for c in listed]  # tolist: arrow strings iterate slowly one by one
        if self.share <= 0:
            return np.zeros(len(ids), dtype=bool)
        prefix = f"{self.salt}\x1f".encode()
        blake = hashlib.blake2b
        digests = b"".join([blake(prefix + c.encode(), digest_size=8).digest() for c in ids])
        # uint64 -> float64 rounds to nearest like Python's int / float in bucket()
        buckets = np.frombuffer(digests, dtype=">u8").astype(np.float64) / _SCALE
        return buckets < self.share

    @overload
    def logging_probabilities(self, probs: list[float], no_action: int = 0) -> list[float]: ...
    @overload
    def logging_probabilities(self, probs: np.ndarray, no_action: int = 0) -> np.ndarray: ...
    def logging_probabilities(
        self, probs: np.ndarray | list[float], no_action: int = 0
    ) -> np.ndarray | list[float]:
        """``mu = share * [no_action] + (1 - share) * probs`` row-wise (see the module doc);
        ``probs`` is ``[n, K]`` or ``[K]``, or one customer's list of floats (the live path:
        a list back, the same numbers); rows still sum to 1."""
        if isinstance(probs, list):
            row = [(1.0 - self.share) * p for p in probs]
            row[no_action] += self.share
            return row
        mixed = (1.0 - self.share) * np.asarray(probs, dtype="float64")
        mixed[..., no_action] += self.share
        return mixed


#: no control group at all (tests and callers that score without a workspace)
NO_CONTROL = ControlGroup(share=0.0)


def decision_group(in_control: bool, explored: bool) -> str:
    """The group a logged decision records."""
    if in_control:
        return CONTROL
    return EXPLORE if explored else TREATED
