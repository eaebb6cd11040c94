"""The divergence guard's decisions, step by step."""

import math

import pytest

from llmjax.train.guard import DivergenceError, DivergenceGuard


def test_spikes_and_non_finite_losses_trigger_a_rollback_after_patience():
    guard = DivergenceGuard(spike_factor=2.0, patience=3, max_rollbacks=1, warmup_steps=5)
    assert not any(guard.observe(3.0) for _ in range(10))
    assert guard.healthy
    assert not guard.observe(5.9)  # Below 2x the running mean of 3.0.
    assert guard.healthy
    assert not guard.observe(6.5)  # A spike: bad, but one is not enough.
    assert not guard.healthy
    assert not guard.observe(math.nan)
    assert guard.observe(math.inf)  # Third bad step in a row: roll back.
    guard.rolled_back()
    assert guard.healthy
    assert not guard.observe(7.0) and not guard.observe(3.1)  # A good step resets the streak.
    assert not guard.observe(7.0) and not guard.observe(7.0)
    assert guard.observe(7.0)
    with pytest.raises(DivergenceError, match="after 1 rollbacks"):
        guard.rolled_back()


def test_no_spike_detection_before_warmup_or_when_disabled():
    early = DivergenceGuard(spike_factor=2.0, patience=1, max_rollbacks=1, warmup_steps=5)
    early.observe(3.0)
    assert not early.observe(9.0)  # Early losses move fast; only non-finite counts yet.
    off = DivergenceGuard(spike_factor=0.0, patience=1, max_rollbacks=1, warmup_steps=0)
    for _ in range(10):
        off.observe(1.0)
    assert not off.observe(100.0)
    assert off.observe(math.nan)


def _guard():
    return DivergenceGuard(spike_factor=2.0, patience=3, max_rollbacks=1, warmup_steps=5)


def test_a_guard_continued_from_its_recorded_state_decides_as_the_original():
    """What a checkpoint records: a resumed run sees the same spike, finishes the same bad
    streak, and has no fresh rollback budget."""
    losses = [3.0] * 8 + [math.nan, 7.0, 3.0, 6.5, math.nan, 9.0]
    original = _guard()
    original.rollbacks = 1  # One rollback already spent.
    reference = [original.observe(loss) for loss in losses]
    assert reference[-1] and not any(reference[:-1])  # (spike, NaN, spike) ends in a rollback.
    for cut in range(len(losses) + 1):
        first = _guard()
        first.rollbacks = 1
        head = [first.observe(loss) for loss in losses[:cut]]
        resumed = _guard()
        resumed.load(first.state())
        assert head + [resumed.observe(loss) for loss in losses[cut:]] == reference, cut
    with pytest.raises(DivergenceError):  # The budget the state carried is spent.
        resumed.rolled_back()
    fresh = _guard()
    assert not any(fresh.observe(loss) for loss in losses[-6:])  # Without it the spikes pass unseen.
