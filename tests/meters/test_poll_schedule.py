"""When a meter's next poll is due: the rhythm of good polls, retries while the last reading is fresh, backoff
after (gateway.meters.service.next_poll_due, a pure function of the meter's config and its poll's times)."""

from __future__ import annotations

import pytest

from gateway.meters.config import MeterConfig
from gateway.meters.service import next_poll_due

CFG = MeterConfig(id="m", circuit="c", poll_interval_s=0.5, timeout_s=0.15, stale_after_s=1.5)


def test_a_good_poll_keeps_the_rhythm_and_never_bunches_up() -> None:
    assert next_poll_due(CFG, due=10.0, started=10.01, ended=10.05, fails=0, good_age_s=0.05) == 10.5
    # a poll that started late (the bus was busy) is not followed by a burst of catch-up polls
    assert next_poll_due(CFG, due=10.0, started=11.2, ended=11.3, fails=0, good_age_s=0.1) == 11.2


def test_a_failed_poll_is_retried_at_the_interval_while_the_reading_would_still_be_fresh() -> None:
    # three timeouts in a row with the last good reading 0.2, 0.85 and 1.0 s old: each retry comes one
    # interval after the failure (a doubling backoff would have waited 0.5, 1.0, 2.0 s and let it go stale)
    for fails, age in ((1, 0.2), (2, 0.85), (3, 1.0)):
        assert next_poll_due(CFG, due=0.0, started=5.0, ended=5.15, fails=fails, good_age_s=age) == pytest.approx(5.65)


def test_once_the_reading_cannot_stay_fresh_failures_back_off_up_to_the_stale_timeout() -> None:
    waits = [next_poll_due(CFG, due=0.0, started=5.0, ended=5.15, fails=f, good_age_s=1.2) - 5.15 for f in (1, 2, 3, 4)]
    assert waits == pytest.approx([0.5, 1.0, 1.5, 1.5])
    # an invalid or missing reading counts as none: backoff from the first failure
    assert next_poll_due(CFG, due=0.0, started=5.0, ended=5.15, fails=2, good_age_s=None) == pytest.approx(6.15)
