"""The history store: survives a restart, prunes what is older than the retention, stays bounded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.web.store import MAX_EVENTS, HistoryStore


async def test_history_survives_a_restart_and_is_read_back_per_charger(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    s = HistoryStore(path, retention_s=3600)
    for k in range(5):
        s.add_site(1000.0 + k, 3, [10.0 + k, 11, 12, 20, 21, 22, 100, 100, 100])
        s.add_chargers(1000.0 + k, ("A", "B"), [16.0, 15.5 + k, 32.0, None])
    s.add_event(1001.0, "cap", "site_cap_set", {"cap_a": 60})
    await s.flush()
    s.close()

    s = HistoryStore(path, retention_s=3600)
    site = await s.site_history(0)
    assert [r["measured_a"][0] for r in site] == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert site[0]["allocated_a"] == [20.0, 21.0, 22.0] and site[0]["limit_a"] == [100.0] * 3
    b = await s.charger_history("B", 0)
    assert [(r["limit"], r["draw"]) for r in b] == [(32.0, None)] * 5
    a = await s.charger_history("A", 1002.0)
    assert [r["draw"] for r in a] == [17.5, 18.5, 19.5]
    # a reload changes the chargers: a new layout, the old rows still answer for the chargers they hold
    s.add_chargers(1005.0, ("B", "C"), [8.0, 7.0, 6.0, 5.0])
    await s.flush()
    assert [r["limit"] for r in await s.charger_history("B", 0)] == [32.0] * 5 + [8.0]
    assert [r["limit"] for r in await s.charger_history("C", 0)] == [6.0]
    assert [e["name"] for e in await s.events()] == ["site_cap_set"]
    s.close()


async def test_rows_older_than_the_retention_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    s = HistoryStore(path, retention_s=100)
    for k in range(300):
        s.add_site(float(k), 1, [1.0, 2.0, 3.0])
        s.add_chargers(float(k), ("A",), [1.0, 2.0])
    await s.flush()
    site = await s.site_history(0)
    assert len(site) == 101 and site[0]["ts"] == 199.0
    assert len(await s.charger_history("A", 0)) == 101
    s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM site").fetchone()[0] == 101


async def test_the_event_log_is_bounded_and_filtered(tmp_path: Path) -> None:
    s = HistoryStore(tmp_path / "h.sqlite")
    for k in range(MAX_EVENTS + 500):
        s.add_event(float(k), "meter" if k % 2 else "cms", f"e{k % 7}", {"k": k, "meter": f"m{k % 3}"})
        if k % 500 == 0:
            await s.flush()  # the queue holds 1000 writes: a burst beyond it is dropped (counted)
    await s.flush()
    newest = await s.events(limit=5)
    assert [e["fields"]["k"] for e in newest] == [MAX_EVENTS + 499 - i for i in range(5)]
    assert all(e["kind"] == "meter" for e in await s.events(kinds=("meter",), limit=50))
    assert all("m2" in e["fields"]["meter"] for e in await s.events(text="m2", limit=50))
    s.close()
    with sqlite3.connect(tmp_path / "h.sqlite") as db:
        n = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert MAX_EVENTS <= n <= MAX_EVENTS + 100


async def test_writes_beyond_the_queue_are_dropped_and_counted_never_blocking(tmp_path: Path) -> None:
    s = HistoryStore(tmp_path / "h.sqlite")
    for k in range(5000):
        s.add_site(float(k), 1, [1.0, 2.0, 3.0])
    await s.flush()
    kept = len(await s.site_history(0))
    assert kept + s.dropped == 5000 and kept >= 1000
    s.close()


async def test_a_corrupt_file_is_set_aside_and_the_store_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    path.write_bytes(b"not a database" * 100)
    s = HistoryStore(path)
    s.add_site(1.0, 1, [1.0, 2.0, 3.0])
    await s.flush()
    assert len(await s.site_history(0)) == 1
    s.close()
    assert path.with_suffix(".corrupt").exists()


async def test_a_long_history_is_merged_into_buckets_that_keep_the_peaks(tmp_path: Path) -> None:
    s = HistoryStore(tmp_path / "h.sqlite", retention_s=1e9)
    for k in range(1000):
        spike = 90.0 if k == 503 else 10.0
        limit = 40.0 if k == 777 else 100.0
        s.add_site(float(k), 1, [spike, 20.0, limit])
    await s.flush()
    rows = await s.site_history(0, max_points=100)
    assert len(rows) == 100
    assert max(r["measured_a"][0] for r in rows) == 90.0  # the spike survives the merge
    assert min(r["limit_a"][0] for r in rows) == 40.0  # and so does the dip of the limit
    assert sum(1 for r in rows if r["measured_a"][0] == 90.0) == 1
    assert len(await s.site_history(0)) == 1000
    s.close()
