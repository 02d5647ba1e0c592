"""Rate limiters: client-go's numbers for backoff, token bucket and their combination."""

from __future__ import annotations

import pytest

from nexus.runtime.clock import FakeClock
from nexus.runtime.ratelimiter import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    RateLimiter,
    default_controller_rate_limiter,
)


def test_exponential_doubles_from_5ms_and_caps_at_1000s() -> None:
    rl: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter()
    delays = [rl.when("a") for _ in range(25)]
    assert delays[:4] == pytest.approx([0.005, 0.01, 0.02, 0.04])
    assert delays[17] == pytest.approx(0.005 * 2**17)  # 655 s: the last uncapped delay
    assert delays[18:] == [1000.0] * 7  # the 19th failure reaches the cap
    assert rl.num_requeues("a") == 25


def test_exponential_is_per_item() -> None:
    rl: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter()
    rl.when("a")
    rl.when("a")
    assert rl.when("b") == pytest.approx(0.005)
    assert rl.when("a") == pytest.approx(0.02)
    assert rl.num_requeues("a") == 3
    assert rl.num_requeues("b") == 1
    assert rl.num_requeues("never") == 0


def test_exponential_forget_resets_and_releases_the_entry() -> None:
    rl: ItemExponentialFailureRateLimiter[int] = ItemExponentialFailureRateLimiter(0.1, 10.0)
    for key in range(1000):
        rl.when(key)
        rl.when(key)
    assert len(rl) == 1000
    for key in range(1000):
        rl.forget(key)
    assert len(rl) == 0
    assert rl.num_requeues(5) == 0
    assert rl.when(5) == pytest.approx(0.1)
    rl.forget(123_456)  # forgetting an unknown item is harmless


def test_exponential_survives_huge_failure_counts() -> None:
    rl: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(1.0, 5.0)
    delays = [rl.when("a") for _ in range(3000)]  # 2.0 ** 1024 would raise OverflowError
    assert delays[-1] == 5.0
    big: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(1e300, 1e308)
    assert [big.when("a") for _ in range(30)][-1] == 1e308  # product overflows to inf


def test_bucket_allows_a_burst_then_spaces_reservations() -> None:
    clock = FakeClock(100.0)
    rl: BucketRateLimiter[str] = BucketRateLimiter(qps=10.0, burst=100, clock=clock)
    delays = [rl.when(f"k{i}") for i in range(105)]
    assert delays[:100] == [0.0] * 100
    assert delays[100:] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_bucket_refills_with_time_up_to_burst() -> None:
    clock = FakeClock()
    rl: BucketRateLimiter[str] = BucketRateLimiter(qps=10.0, burst=5, clock=clock)
    assert [rl.when("x") for _ in range(7)] == pytest.approx([0, 0, 0, 0, 0, 0.1, 0.2])
    clock.advance(1.0)  # -2 + 10 tokens, capped at the burst of 5
    assert [rl.when("x") for _ in range(6)] == pytest.approx([0, 0, 0, 0, 0, 0.1])
    clock.advance(0.05)  # half a token: the next reservation is 0.1 s after the last
    assert rl.when("x") == pytest.approx(0.15)


def test_bucket_keeps_no_per_item_state() -> None:
    rl: BucketRateLimiter[str] = BucketRateLimiter(qps=1.0, burst=1, clock=FakeClock())
    rl.when("a")
    rl.when("a")
    assert rl.num_requeues("a") == 0
    rl.forget("a")
    assert rl.when("a") == pytest.approx(2.0)  # forget does not refund reservations


def test_bucket_without_clock_needs_no_event_loop() -> None:
    rl: BucketRateLimiter[str] = BucketRateLimiter(qps=1000.0, burst=2)
    assert rl.when("a") == 0.0
    assert rl.when("a") == 0.0
    assert 0.0 < rl.when("a") <= 0.001


def test_bucket_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        BucketRateLimiter(qps=0)
    with pytest.raises(ValueError):
        BucketRateLimiter(burst=-1)


def test_max_of_takes_the_longest_delay_and_forwards_everything() -> None:
    clock = FakeClock()
    exp: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(0.01, 100.0)
    bucket: BucketRateLimiter[str] = BucketRateLimiter(qps=1.0, burst=2, clock=clock)
    rl = MaxOfRateLimiter(exp, bucket)
    assert rl.when("a") == pytest.approx(0.01)  # bucket 0, backoff 0.01
    assert rl.when("a") == pytest.approx(0.02)
    assert rl.when("b") == pytest.approx(1.0)  # bucket now empty: 1 s beats 0.01
    assert rl.num_requeues("a") == 2
    assert len(rl) == 2
    rl.forget("a")
    assert rl.num_requeues("a") == 0
    assert len(rl) == 1
    assert rl.when("a") == pytest.approx(2.0)  # the bucket is shared and was not reset


def test_max_of_forgets_in_every_limiter() -> None:
    slow: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(0.001, 1.0)
    fast: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(1.0, 100.0)
    rl = MaxOfRateLimiter(slow, fast)
    for _ in range(3):
        rl.when("a")
    rl.forget("a")
    assert (slow.num_requeues("a"), fast.num_requeues("a")) == (0, 0)
    assert rl.when("a") == 1.0


def test_default_controller_rate_limiter_numbers() -> None:
    clock = FakeClock()
    rl: RateLimiter[str] = default_controller_rate_limiter(clock)
    # 100 distinct failures: the burst absorbs them, the per-item backoff decides.
    assert [rl.when(f"k{i}") for i in range(100)] == pytest.approx([0.005] * 100)
    # Bucket exhausted: 10 qps spacing dominates a first failure's 5 ms.
    assert rl.when("k100") == pytest.approx(0.1)
    clock.advance(1000.0)
    # With a full bucket again, an item's 12th failure waits for its backoff: 5 ms * 2**11.
    for _ in range(11):
        rl.when("hot")
    assert rl.when("hot") == pytest.approx(0.005 * 2**11)
    assert rl.num_requeues("hot") == 12


def test_limiters_are_truthy_even_when_empty() -> None:
    # `options.rate_limiter or default` must not replace a configured, still-empty limiter.
    assert ItemExponentialFailureRateLimiter()
    assert MaxOfRateLimiter(ItemExponentialFailureRateLimiter[str]())
