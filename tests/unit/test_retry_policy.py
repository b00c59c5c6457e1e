"""Bounds of the exponential backoff with jitter."""

from __future__ import annotations

import random

from docqueue.models import RetryPolicy


def test_backoff_doubles_within_jitter_and_caps() -> None:
    """Attempt n waits between half and all of base * 2**(n-1), never past the cap."""
    policy = RetryPolicy(base_delay=2.0, max_delay=60.0)
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(60.0, 2.0 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jitter spreads retries out
