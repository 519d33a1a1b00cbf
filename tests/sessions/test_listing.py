"""The memory store's listing index (StartOrder) against a sorted set, and its sealed cursors."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.sessions.store import listing
from gateway.sessions.store.listing import StartOrder, new_cursor_key, open_cursor, seal_cursor

# Few times and ids, so that ties on the time and re-adds of a pair are common.
PAIRS = st.tuples(st.integers(0, 5).map(float), st.sampled_from("abcdefgh"))
OPS = st.lists(st.tuples(st.booleans(), PAIRS), min_size=50, max_size=300)


def _blocks_hold_their_tails(order: StartOrder) -> bool:
    """No block is empty, and every one but the last (open) one has its last pair in the tails."""
    closed = zip(order._times[:-1], order._ids[:-1], order._tails, order._tail_ids, strict=True)
    return all(
        len(times) == len(ids) > 0 for times, ids in zip(order._times, order._ids, strict=True)
    ) and all((tail, tail_id) == (times[-1], ids[-1]) for times, ids, tail, tail_id in closed)


@settings(max_examples=60, deadline=None)
@given(ops=OPS, initial=st.lists(PAIRS, max_size=50))
@example(ops=[(False, (0.0, "a"))], initial=[(0.0, "a")])  # the last session ends: no block left
def test_start_order_is_a_sorted_set_of_pairs(
    ops: list[tuple[bool, tuple[float, str]]], initial: list[tuple[float, str]]
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(listing, "_LOAD", 4)  # tiny blocks: a split or a merge every few operations
        order, expected = StartOrder(set(initial)), set(initial)
        for add, (created, session_id) in ops:
            if add:
                order.add(created, session_id)
                expected.add((created, session_id))
            else:
                order.discard(created, session_id)
                expected.discard((created, session_id))
            assert _blocks_hold_their_tails(order)
    ordered = sorted(expected)
    assert order.after(None, 10_000) == [session_id for _, session_id in ordered]
    assert len(order) == len(ordered)
    for key in [*ordered, (2.5, "a"), (9.0, "z"), (-1.0, "")]:  # present, and between or beyond every pair
        after = [session_id for created, session_id in ordered if (created, session_id) > key]
        assert order.after(key, 3) == after[:3]


def test_cursors_round_trip_and_refuse_what_another_key_or_a_typo_made() -> None:
    key = new_cursor_key()
    cursor = seal_cursor(key, (1.5, "projects/p/sessions/3f0c\n"))
    assert open_cursor(key, cursor) == (1.5, "projects/p/sessions/3f0c\n")
    assert "3f0c" not in cursor and cursor.isascii() and "=" not in cursor  # opaque, and safe in a query
    for bad in (cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB"), "", "%%%", "abc"):
        with pytest.raises(ValueError):
            open_cursor(key, bad)
    with pytest.raises(ValueError):
        open_cursor(new_cursor_key(), cursor)  # a restarted gateway's
