"""The follower's bookkeeping: each row printed once, a late commit of a smaller id still printed."""

from keybrake_addon.cli.following import GAP_GRACE_S, MAX_GAPS, Follower


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rows(*ids: int) -> list[dict]:
    return [{"id": row_id} for row_id in ids]


def printed(follower: Follower, *ids: int) -> list[int]:
    return [row["id"] for row in follower.take(rows(*ids))]


def test_new_rows_once_in_id_order():
    follower = Follower(10)
    assert follower.wanted() == (10, ())
    assert printed(follower, 12, 11) == [11, 12]
    assert printed(follower, 12, 13) == [13]  # 12 again (asked for as a gap, say): not printed twice
    assert follower.wanted() == (13, ())


def test_a_skipped_id_is_asked_for_and_printed_when_its_commit_lands():
    clock = Clock()
    follower = Follower(10, clock=clock)
    assert printed(follower, 11, 14) == [11, 14]  # 12 and 13 are still in flight (PostgreSQL)
    assert follower.wanted() == (14, (12, 13))
    clock.now += 1
    assert printed(follower, 13) == [13]
    assert follower.wanted() == (14, (12,))


def test_a_gap_nobody_fills_is_given_up_after_the_grace():
    clock = Clock()
    follower = Follower(0, clock=clock)
    printed(follower, 1, 3)  # 2 rolled back: it never comes
    clock.now += GAP_GRACE_S - 1
    assert follower.wanted() == (3, (2,))
    clock.now += 2
    assert follower.wanted() == (3, ())
    assert printed(follower, 2) == []  # so late it is taken for a row printed before


def test_gaps_are_bounded():
    follower = Follower(0)
    printed(follower, 10 * MAX_GAPS)
    after, waiting = follower.wanted()
    assert after == 10 * MAX_GAPS and len(waiting) == MAX_GAPS and waiting[-1] == 10 * MAX_GAPS - 1
