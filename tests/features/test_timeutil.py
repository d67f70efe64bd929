"""The one UTC helper: naive instants are UTC (never the machine's local time), aware ones
are converted, whatever form they come in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest

from features.timeutil import as_utc

NOON = datetime(2025, 3, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        datetime(2025, 3, 1, 12),
        datetime(2025, 3, 1, 13, tzinfo=timezone(timedelta(hours=1))),
        NOON,
        pd.Timestamp("2025-03-01 12:00"),
        pd.Timestamp("2025-03-01 07:00", tz="America/New_York"),
        "2025-03-01T12:00:00",
        "2025-03-01T14:00:00+02:00",
    ],
)
def test_every_form_of_one_instant_is_the_same_utc_datetime(value: object) -> None:
    got = as_utc(value)  # type: ignore[arg-type]
    assert type(got) is datetime and got == NOON and got.utcoffset() == timedelta(0)


def test_naive_is_utc_whatever_the_process_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert as_utc(datetime(2025, 3, 1, 12)) == NOON
        assert as_utc("2025-03-01 12:00") == NOON
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_not_a_date_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        as_utc("yesterday-ish")
