"""The allocator's record of the decreases each charger follows (gateway.allocation.state.Follows): compacting
it, or adding to it, keeps every row's followed decreases and their order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.allocation.state import NEVER, Follows

Row = list[tuple[float, float]]


def follows_of(rows: list[Row], width: int) -> Follows:
    f = Follows(np.zeros((len(rows), width)), np.full((len(rows), width), NEVER), np.zeros(len(rows), dtype=np.intp))
    for i, row in enumerate(rows):
        for j, (a, until) in enumerate(row):
            f.a[i, j], f.until[i, j] = a, until
        f.n[i] = len(row)
    return f


# a slot with until NEVER is a lapsed one, still counted in n until compacted
slots = st.tuples(st.floats(0.0, 64.0), st.one_of(st.just(NEVER), st.floats(0.0, 100.0)))
rows_st = st.lists(st.lists(slots, max_size=6), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(rows_st, st.integers(0, 3))
def test_compacting_keeps_every_rows_followed_decreases_in_order(rows: list[Row], spare: int) -> None:
    width = max(len(r) for r in rows) + spare
    f = follows_of(rows, width)
    before = [f.row(i) for i in range(len(rows))]
    f._compact()
    assert [f.row(i) for i in range(len(rows))] == before
    kept = [sum(u != NEVER for _, u in r) for r in rows]
    assert f.n.tolist() == kept
    assert f.a.shape == f.until.shape == (len(rows), max(kept) + 2)  # two free slots beyond the fullest row
    for i, k in enumerate(kept):  # the followed ones in the first slots, the rest unused
        assert (f.until[i, :k] > NEVER).all() and (f.until[i, k:] == NEVER).all()


@settings(max_examples=200, deadline=None)
@given(rows_st, st.data())
def test_adding_after_live_appends_to_the_rows_chosen_and_keeps_the_others(
    rows: list[Row], data: st.DataObject
) -> None:
    n = len(rows)
    f = follows_of(rows, max(len(r) for r in rows)).live(50.0)
    before = [f.row(i) for i in range(n)]
    chosen = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    a, until = np.arange(n, dtype=np.float64) + 0.5, np.full(n, 99.0)
    f.add(chosen, a, until)
    for i in range(n):
        assert f.row(i) == before[i] + (((float(a[i]), 99.0),) if chosen[i] else ())
    # what live() dropped is gone, what it kept is there
    assert all(u > 50.0 for i in range(n) for _, u in before[i])
