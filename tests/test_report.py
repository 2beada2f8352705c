"""maildesk.report's arithmetic: a group's median and p90 are taken from its parts'
sorted times without merging them (report._select); they must be what the standard
library computes on the group's times together."""

from __future__ import annotations

from statistics import median, quantiles

from hypothesis import given
from hypothesis import strategies as st

from maildesk import report

seconds = st.floats(min_value=0, max_value=1e8, allow_nan=False)


@given(st.lists(st.lists(seconds, max_size=30), min_size=1, max_size=6),
       st.lists(seconds, max_size=30))
def test_a_groups_median_and_p90_are_those_of_its_times_together(
    parts: list[list[float]], others: list[float]
) -> None:
    parts = [sorted(p) for p in parts]
    every = sorted([*others, *(x for p in parts for x in p)])  # the desk: the group and more
    together = sorted(x for p in parts for x in p)
    got = report._stats([p for p in parts if p], every)
    if not together:
        assert got == {"count": 0, "median": None, "p90": None}
        return
    p90 = (quantiles(together, n=10, method="inclusive")[-1] if len(together) > 1
           else together[0])
    assert got == {"count": len(together), "median": round(median(together), 1),
                   "p90": round(p90, 1)}
