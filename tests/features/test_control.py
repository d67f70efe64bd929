"""The control group: a salted hash every path computes alike, and its recorded changes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pytest

from features.control import DEFAULT_SALT, DEFAULT_SHARE, NO_CONTROL, ControlGroup, bucket
from features.tables.control import (
    ControlFileError,
    change_control,
    control_history,
    control_path,
    count_members,
    read_control,
)

IDS = [f"C{i:06d}" for i in range(40_000)]


def test_the_share_is_held_and_the_same_ids_always_land_alike() -> None:
    group = ControlGroup(0.05, "s1")
    mask = group.mask(IDS)
    assert abs(mask.mean() - 0.05) < 0.005  # 40,000 draws: sd 0.0011
    assert [group.contains(c) for c in IDS[:2000]] == mask[:2000].tolist()
    assert np.array_equal(ControlGroup(0.05, "s1").mask(IDS), mask)
    assert not NO_CONTROL.mask(IDS).any()


def test_a_new_salt_draws_an_independent_group_and_a_larger_share_only_adds() -> None:
    a, b = ControlGroup(0.1, "s1").mask(IDS), ControlGroup(0.1, "s2").mask(IDS)
    both = (a & b).mean()
    assert abs(both - 0.01) < 0.003  # independent: 0.1 x 0.1
    wider = ControlGroup(0.2, "s1").mask(IDS)
    assert not (a & ~wider).any()
    assert 0 <= bucket("x", "C1") < 1


def test_mixture_propensities_sum_to_one_and_put_the_share_on_no_action() -> None:
    probs = np.array([[0.1, 0.6, 0.3], [1.0, 0.0, 0.0]])
    mixed = ControlGroup(0.05, "s").logging_probabilities(probs)
    assert np.allclose(mixed.sum(axis=1), 1.0)
    assert mixed[0].tolist() == pytest.approx([0.05 + 0.95 * 0.1, 0.95 * 0.6, 0.95 * 0.3])
    assert mixed[1, 0] == pytest.approx(1.0)
    for share in (0.0, 0.05, 0.1 / 3):  # one customer's list (the live path): the same bits
        control = ControlGroup(share, "s")
        for row in probs:
            listed = control.logging_probabilities(row.tolist())
            assert np.array(listed).tobytes() == control.logging_probabilities(row).tobytes()


@pytest.mark.parametrize("share", [-0.1, 0.51])
def test_a_share_outside_zero_to_a_half_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="control share"):
        ControlGroup(share, "s")


def test_changes_are_recorded_with_their_time_and_the_file_follows(tmp_path: Path) -> None:
    db = duckdb.connect(str(tmp_path / "w.duckdb"))
    default = read_control(tmp_path)
    assert default.group == ControlGroup(DEFAULT_SHARE, DEFAULT_SALT)
    assert default.changed_at is None and control_history(db).empty
    t1, t2 = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    first = change_control(db, tmp_path, share=0.1, now=t1)
    assert first.group == ControlGroup(0.1, DEFAULT_SALT)
    second = change_control(db, tmp_path, reshuffle=True, now=t2)
    assert second.group.share == 0.1 and second.group.salt != DEFAULT_SALT
    assert read_control(tmp_path) == second
    history = control_history(db)
    assert history["change"].tolist() == ["share 0.05 -> 0.1", "reshuffle"]
    assert history["salt"].tolist() == [DEFAULT_SALT, second.group.salt]
    assert history["previous_salt"].tolist() == [DEFAULT_SALT, DEFAULT_SALT]
    assert [t.to_pydatetime() for t in history["changed_at"]] == [t1, t2]
    with pytest.raises(ValueError, match="nothing to change"):
        change_control(db, tmp_path)
    with pytest.raises(ValueError, match="control share"):
        change_control(db, tmp_path, share=0.9)
    assert read_control(tmp_path) == second  # a refused change changes nothing
    db.execute("CREATE TABLE customers AS SELECT 'C' || i AS customer_id FROM range(1000) t(i)")
    members, total = count_members(db, second.group)
    assert total == 1000 and 50 < members < 160


def test_an_unreadable_control_file_is_an_error_naming_it(tmp_path: Path) -> None:
    control_path(tmp_path).write_text(json.dumps({"share": 2.0, "salt": "s"}))
    with pytest.raises(ControlFileError, match=r"control\.json"):
        read_control(tmp_path)
    control_path(tmp_path).write_text("{not json")
    with pytest.raises(ControlFileError, match=r"control\.json"):
        read_control(tmp_path)
