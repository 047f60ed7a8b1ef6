"""The webhook retry schedule: Standard Webhooks / Svix-like delays, within the window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from imagegate.webhooks.deliveries import next_attempt, retry_delay

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = 86400.0


def test_the_default_delays_are_svix_s() -> None:
    delays = [retry_delay(n, 5.0) for n in range(1, 10)]
    assert delays == [5, 300, 1800, 7200, 18000, 36000, 36000, 36000, 36000]


def test_the_base_scales_every_delay() -> None:
    assert [retry_delay(n, 0.05) for n in (1, 2, 3)] == [0.05, 3.0, 18.0]


def test_retries_run_for_the_window_then_stop() -> None:
    now, first, attempts, times = T0, T0, 1, [T0]
    while True:
        at = next_attempt(first, attempts, now, base_seconds=5.0, window_seconds=DAY)
        if at is None:
            break
        assert at > now
        now, attempts = at, attempts + 1
        times.append(now)
    # 0, 5 s, 5 min 5 s, 35 min 5 s, 2 h 35 min 5 s, 7 h 35 min 5 s, 17 h 35 min 5 s, and a
    # last try at the end of the window rather than at 27 h 35 min.
    offsets = [(t - T0).total_seconds() for t in times]
    assert offsets == [0, 5, 305, 2105, 9305, 27305, 63305, DAY]
    assert attempts == 8


def test_the_window_counts_from_the_first_attempt() -> None:
    late = T0 + timedelta(seconds=DAY)
    assert next_attempt(T0, 3, late, base_seconds=5.0, window_seconds=DAY) is None
    soon = T0 + timedelta(seconds=DAY - 10)
    assert next_attempt(T0, 7, soon, base_seconds=5.0, window_seconds=DAY) == late
