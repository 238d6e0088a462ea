"""Pure: the token store's circuit breaker, a state machine with the clock passed in.

A store that hangs answers every call only when its timeout runs out, so without a breaker
every page that links a token target waits ``store.timeout_ms`` for nothing (the newcomer's
review, finding #9). The breaker counts consecutive failures of the calls made on the request
path and, past a threshold, refuses calls for a cool-down; then it lets one call through to
probe the store.

Guarantees:

* ``closed``: every call is allowed. ``failures`` consecutive failures open the circuit; any
  success starts the count again.
* ``open``: no call is allowed until ``cooldown`` seconds have passed since it opened.
* ``half_open``: the first call asked for after the cool-down is the probe, and the only call
  allowed until it reports: its success closes the circuit, its failure opens it again for
  another cool-down. A probe that ends without a verdict (cancelled, or a caller's error that
  says nothing about the store) is released, and the next call becomes the probe.
* Only the verdict of a call allowed in the current episode counts: calls let through while
  the circuit was closed may report after it opened (they were already waiting on the store),
  and their late results neither extend the cool-down nor close the circuit.

Time only comes in as ``now`` (seconds, any monotonic origin); nothing here sleeps, logs or
does I/O. The wrapper around a store (:class:`gateway.store.CircuitBreakerStore`) reports each
change of ``state``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Ticket:
    """Permission for one call, to hand back with its verdict. ``probe``: the half-open call
    whose verdict decides the circuit; ``episode``: the period of the circuit that allowed it
    (each opening and each probe starts a new one)."""

    probe: bool
    episode: int


class CircuitBreaker:
    """Counts consecutive failures; see the module docstring for the rules."""

    def __init__(self, *, failures: int, cooldown: float) -> None:
        """``failures``: consecutive failures that open the circuit (at least 1);
        ``cooldown``: seconds it stays open before a probe (at least 0)."""
        if failures < 1:
            raise ValueError(f"circuit breaker threshold must be at least 1, not {failures}")
        if cooldown < 0:
            raise ValueError(f"circuit breaker cool-down must not be negative, not {cooldown}")
        self.threshold = failures
        self.cooldown = cooldown
        self.state: State = "closed"
        self.failures = 0
        """Consecutive failures counted in the current closed period."""
        self.opened_at: float | None = None
        self._probing = False
        # Bumped whenever the circuit opens and whenever a probe goes out: tickets of an
        # earlier period are late, and their verdicts are ignored.
        self._episode = 0

    def allow(self, now: float) -> Ticket | None:
        """A ticket if a call may go to the store now, else None (fail fast)."""
        if self.state == "closed":
            return Ticket(probe=False, episode=self._episode)
        if self.state == "open":
            assert self.opened_at is not None
            if now < self.opened_at + self.cooldown:
                return None
            self.state = "half_open"
        if self._probing:
            return None
        self._probing = True
        self._episode += 1
        return Ticket(probe=True, episode=self._episode)

    def retry_in(self, now: float) -> float:
        """Seconds until the next probe may go (0 unless open)."""
        if self.state != "open" or self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown - now)

    def succeeded(self, ticket: Ticket) -> None:
        """The call answered (whatever it answered: an unknown token is an answer)."""
        if ticket.probe:
            if self._is_current_probe(ticket):
                self._probing = False
                self.state = "closed"
                self.failures = 0
                self.opened_at = None
        elif self.state == "closed" and ticket.episode == self._episode:
            self.failures = 0

    def failed(self, ticket: Ticket, now: float) -> None:
        """The call failed or timed out."""
        if ticket.probe:
            if self._is_current_probe(ticket):
                self._probing = False
                self._open(now)
        elif self.state == "closed" and ticket.episode == self._episode:
            self.failures += 1
            if self.failures >= self.threshold:
                self._open(now)

    def released(self, ticket: Ticket) -> None:
        """The call ended without a verdict on the store: a probe lets the next call probe."""
        if ticket.probe and self._is_current_probe(ticket):
            self._probing = False

    def _is_current_probe(self, ticket: Ticket) -> bool:
        return self.state == "half_open" and self._probing and ticket.episode == self._episode

    def _open(self, now: float) -> None:
        self.state = "open"
        self.opened_at = now
        self.failures = 0
        self._episode += 1
