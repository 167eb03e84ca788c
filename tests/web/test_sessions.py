"""Sessions expire; the login rate limit forgets failures older than its window (pure, clock passed in)."""

from __future__ import annotations

from gateway.web.auth import RateLimit, Sessions


def test_a_session_expires_after_its_lifetime_and_can_be_dropped() -> None:
    s = Sessions(lifetime_s=100.0)
    token, sess = s.create("anna", "technician", now=0.0)
    assert s.get(token, 99.9) == sess and sess.csrf and sess.role == "technician"
    assert s.get(token, 100.0) is None
    assert s.get(token, 50.0) is None  # gone for good once expired
    t2, _ = s.create("anna", "technician", now=0.0)
    t3, _ = s.create("bob", "viewer", now=0.0)
    s.drop_user("anna")
    assert s.get(t2, 1.0) is None and s.get(t3, 1.0) is not None
    s.drop(t3)
    assert s.get(t3, 1.0) is None and s.get(None, 1.0) is None and s.get("nonsense", 1.0) is None


def test_the_rate_limit_counts_failures_per_key_within_its_window() -> None:
    r = RateLimit(per_min=3)
    keys = ("ip:10.0.0.1", "user:anna")
    for t in (0.0, 10.0, 20.0):
        assert r.retry_after(keys, t) == 0.0
        r.failed(keys, t)
    assert r.retry_after(keys, 30.0) == 30.0  # the oldest failure leaves the window at t = 60
    assert r.retry_after(("ip:10.0.0.1",), 59.0) == 1.0
    assert r.retry_after(("user:bob",), 30.0) == 0.0  # another user from another address
    assert r.retry_after(keys, 60.0) == 0.0
