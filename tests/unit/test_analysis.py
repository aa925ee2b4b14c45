"""Canary analysis: no data is never a pass; errors and latency against stable decide."""

from hinotori.deploy.analysis import Outcome, Thresholds, Window, enough_for, judge
from hinotori.model import LATENCY_BUCKETS_MS

T = Thresholds(max_error_rate=0.01, max_error_rate_diff=0.01, max_p99_ratio=1.5,
               min_requests=50)


def lat(ms: int, n: int) -> tuple[int, ...]:
    buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    buckets[list(LATENCY_BUCKETS_MS).index(ms)] = n
    return tuple(buckets)


def test_no_traffic_is_inconclusive_not_a_pass() -> None:
    v = judge(Window(1000, 0, lat(5, 1000)), Window(0, 0, lat(5, 0)), T)
    assert v.outcome == Outcome.INCONCLUSIVE and "need 50" in v.reasons[0]


def test_healthy_canary_passes() -> None:
    v = judge(Window(1000, 2, lat(5, 1000)), Window(100, 0, lat(5, 100)), T)
    assert v.outcome == Outcome.PASS and v.metrics["p99_ratio"] == 1.0


def test_error_rate_absolute_and_relative() -> None:
    v = judge(Window(1000, 0, lat(5, 1000)), Window(100, 5, lat(5, 100)), T)
    assert v.outcome == Outcome.FAIL and len(v.reasons) == 2
    lenient = Thresholds(max_error_rate=0.5, max_error_rate_diff=0.01)
    assert judge(Window(1000, 40, lat(5, 1000)), Window(100, 5, lat(5, 100)),
                 lenient).outcome == Outcome.PASS  # 5% vs 4%: within 1 point


def test_latency_ratio() -> None:
    v = judge(Window(1000, 0, lat(5, 1000)), Window(100, 0, lat(20, 100)), T)
    assert v.outcome == Outcome.FAIL and "p99" in v.reasons[0]


def test_too_little_stable_traffic_cannot_compare() -> None:
    v = judge(Window(10, 0, lat(5, 10)), Window(100, 0, lat(5, 100)), T)
    assert v.outcome == Outcome.INCONCLUSIVE


def test_window_deltas() -> None:
    later, earlier = Window(150, 3, lat(5, 150)), Window(100, 1, lat(5, 100))
    assert later.minus(earlier) == Window(50, 2, lat(5, 50))


def test_one_slow_request_among_few_is_not_a_slow_p99() -> None:
    """CI's flake: 54 canary requests, one of them 100 ms: p99 was that one request."""
    assert (enough_for(99), enough_for(95), enough_for(50)) == (100, 20, 2)
    one_slow = tuple(a + b for a, b in zip(lat(5, 53), lat(100, 1), strict=True))
    v = judge(Window(1000, 0, lat(5, 1000)), Window(54, 0, one_slow), T)
    assert v.outcome == Outcome.INCONCLUSIVE and "p99 needs 100" in v.reasons[0]
    # The window grows over the step: at 100 requests the one slow request is above p99.
    more = tuple(a + b for a, b in zip(one_slow, lat(5, 46), strict=True))
    assert judge(Window(1000, 0, lat(5, 1000)), Window(100, 0, more), T).outcome == Outcome.PASS
    two_slow = tuple(a + b for a, b in zip(more, lat(100, 1), strict=True))
    v = judge(Window(1000, 0, lat(5, 1000)), Window(101, 0, two_slow), T)
    assert v.outcome == Outcome.FAIL and "p99 100 ms" in v.reasons[0]


def test_errors_fail_a_window_too_small_for_its_percentiles() -> None:
    v = judge(Window(1000, 0, lat(5, 1000)), Window(60, 10, lat(5, 60)), T)
    assert v.outcome == Outcome.FAIL and "error rate" in v.reasons[0]


def test_p95_is_judged_from_twenty_requests() -> None:
    t = Thresholds(max_p95_ratio=1.5, max_p99_ratio=None, min_requests=10)
    slow = lat(20, 19)
    assert judge(Window(1000, 0, lat(5, 1000)), Window(19, 0, slow), t).outcome == \
        Outcome.INCONCLUSIVE
    assert judge(Window(1000, 0, lat(5, 1000)), Window(20, 0, lat(20, 20)), t).outcome == \
        Outcome.FAIL
