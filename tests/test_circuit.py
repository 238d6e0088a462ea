"""The circuit breaker's state machine (gateway/circuit.py), with the clock passed in: each
guarantee of its docstring, then random call sequences against a plain model of the rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.circuit import CircuitBreaker, Ticket


def breaker(failures: int = 3, cooldown: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(failures=failures, cooldown=cooldown)


def fail(b: CircuitBreaker, now: float, times: int = 1) -> None:
    for _ in range(times):
        ticket = b.allow(now)
        assert ticket is not None
        b.failed(ticket, now)


def test_closed_allows_and_consecutive_failures_open() -> None:
    b = breaker()
    fail(b, 0.0, 2)
    assert (b.state, b.failures) == ("closed", 2)
    fail(b, 1.0)
    assert (b.state, b.opened_at) == ("open", 1.0)
    assert b.allow(1.0) is None


def test_a_success_starts_the_count_again() -> None:
    b = breaker()
    fail(b, 0.0, 2)
    ticket = b.allow(0.0)
    assert ticket is not None
    b.succeeded(ticket)
    assert b.failures == 0
    fail(b, 0.0, 2)
    assert b.state == "closed"


def test_open_refuses_until_the_cooldown_then_one_probe() -> None:
    b = breaker(cooldown=10.0)
    fail(b, 100.0, 3)
    assert b.allow(109.999) is None
    assert b.retry_in(105.0) == pytest.approx(5.0)
    probe = b.allow(110.0)
    assert probe == Ticket(probe=True, episode=2)
    assert b.state == "half_open"
    # Only the probe: everything else still fails fast until it reports.
    assert b.allow(110.0) is None
    assert b.allow(500.0) is None
    assert b.retry_in(110.0) == 0.0


def test_probe_success_closes() -> None:
    b = breaker()
    fail(b, 0.0, 3)
    probe = b.allow(10.0)
    assert probe is not None
    b.succeeded(probe)
    assert (b.state, b.failures, b.opened_at) == ("closed", 0, None)
    assert b.allow(10.0) == Ticket(probe=False, episode=2)


def test_probe_failure_reopens_for_another_cooldown() -> None:
    b = breaker(cooldown=10.0)
    fail(b, 0.0, 3)
    probe = b.allow(12.0)
    assert probe is not None
    b.failed(probe, 12.5)
    assert (b.state, b.opened_at) == ("open", 12.5)
    assert b.allow(22.0) is None
    assert b.allow(22.5) is not None


def test_a_released_probe_lets_the_next_call_probe() -> None:
    b = breaker()
    fail(b, 0.0, 3)
    probe = b.allow(10.0)
    assert probe is not None
    b.released(probe)
    assert b.state == "half_open"
    again = b.allow(10.0)
    assert again is not None and again.probe
    # The first probe's late verdict no longer decides anything.
    b.succeeded(probe)
    assert b.state == "half_open"
    b.succeeded(again)
    assert b.state == "closed"


def test_late_verdicts_of_calls_from_before_the_opening_are_ignored() -> None:
    b = breaker(cooldown=10.0)
    # Three calls go out while closed; the store hangs; the first two fail, then more.
    early = [b.allow(0.0) for _ in range(5)]
    assert all(t is not None and not t.probe for t in early)
    for t in early[:3]:
        assert t is not None
        b.failed(t, 1.0)
    assert (b.state, b.opened_at) == ("open", 1.0)
    # The other two report late: a failure does not extend the cool-down, a success does not
    # close the circuit.
    assert early[3] is not None and early[4] is not None
    b.failed(early[3], 5.0)
    b.succeeded(early[4])
    assert (b.state, b.opened_at) == ("open", 1.0)
    probe = b.allow(11.0)
    assert probe is not None
    # A late closed-period ticket cannot close a half-open circuit either.
    b.succeeded(early[4])
    assert b.state == "half_open"
    b.succeeded(probe)
    assert b.state == "closed"
    # Nor count against the next closed period.
    b.failed(early[3], 12.0)
    assert b.failures == 0


def test_a_threshold_of_one_and_no_cooldown() -> None:
    b = breaker(failures=1, cooldown=0.0)
    fail(b, 0.0)
    assert b.state == "open"
    probe = b.allow(0.0)
    assert probe is not None and probe.probe


@pytest.mark.parametrize(("failures", "cooldown"), [(0, 1.0), (-1, 1.0), (1, -0.1)])
def test_bad_settings_are_refused(failures: int, cooldown: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failures=failures, cooldown=cooldown)


# --- Random sequences against a model -----------------------------------------------------------

_step = st.one_of(
    st.tuples(st.just("call"), st.floats(0, 5)),
    st.tuples(st.just("fail"), st.integers(0, 50), st.floats(0, 5)),
    st.tuples(st.just("ok"), st.integers(0, 50)),
    st.tuples(st.just("release"), st.integers(0, 50)),
)


@given(
    threshold=st.integers(1, 4),
    cooldown=st.sampled_from([0.0, 1.0, 3.0]),
    steps=st.lists(_step, max_size=60),
)
def test_random_sequences_keep_the_rules(
    threshold: int, cooldown: float, steps: list[tuple[object, ...]]
) -> None:
    """``call`` asks for a ticket after time passes; the others report on one of the tickets
    handed out (picked by index), each ticket at most once."""
    b = breaker(threshold, cooldown)
    now = 0.0
    outstanding: list[Ticket] = []
    for step in steps:
        kind = step[0]
        before = (b.state, b.opened_at, b.failures)
        if kind == "call":
            assert isinstance(step[1], float)
            now += step[1]
            probes_out = sum(t.probe for t in outstanding if t.episode == b._episode)
            ticket = b.allow(now)
            if before[0] == "closed":
                assert ticket is not None and not ticket.probe
            elif before[0] == "open" and before[1] is not None and now < before[1] + cooldown:
                assert ticket is None and b.state == "open"
            if ticket is not None:
                if ticket.probe:
                    # Never two probes out at once.
                    assert probes_out == 0
                    assert b.state == "half_open"
                outstanding.append(ticket)
            continue
        if not outstanding:
            continue
        assert isinstance(step[1], int)
        ticket = outstanding.pop(step[1] % len(outstanding))
        if kind == "fail":
            assert isinstance(step[2], float)
            now += step[2]
            b.failed(ticket, now)
        elif kind == "ok":
            b.succeeded(ticket)
        else:
            b.released(ticket)
        # Transitions the rules allow, and only those.
        if before[0] != b.state:
            assert (before[0], b.state) in {
                ("closed", "open"),
                ("half_open", "open"),
                ("half_open", "closed"),
            }
            if b.state == "open":
                assert b.opened_at == now and kind == "fail"
                assert ticket.probe or before[2] + 1 == threshold
            else:
                assert kind == "ok" and ticket.probe
        elif b.state == "open":
            # Late verdicts never move the cool-down.
            assert b.opened_at == before[1]
        if b.state == "closed":
            assert 0 <= b.failures < threshold
