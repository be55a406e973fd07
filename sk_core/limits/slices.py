"""Lease arithmetic: the part of a tenant's limits one process holds, in memory.

Pure bookkeeping, no I/O (the ledger does the storage side, ``leases.py`` the timing).
A process leases, per tenant:

- a **budget slice** for one UTC day (and its month): ``outstanding`` nano-USD moved
  out of the tenant's pool into the process's lease row. Locally it is split into
  ``free`` (not yet reserved), ``held`` (reserved by calls in flight) and ``spent``
  (settled, not yet reported), and ``outstanding == free + held + spent`` always;
- the current minute's **requests and tokens** (``MinuteSlice``), counted as used in
  the minute row when granted, so they never need to be charged again;
- **concurrency slots**, counted in the tenant's in-flight row while leased.

A sync (one conditional transaction) reports ``spent`` and resizes ``free`` to a new
grant. What the store sees for the window changes by exactly ``new_free - free``
(the spent part moves from leased to spent), so the store's invariant
``spent + held + leased <= budget`` holds if the grant fits what is left. A process that
dies leaves ``outstanding`` on its lease row, and the sweep charges all of it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Report:
    """A budget slice's numbers as a sync read them: what it reports and resizes."""

    free: int
    spent: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    overrun: int


@dataclass
class BudgetSlice:
    """One process's share of a tenant's day (and month) budget."""

    day: str
    month: str
    outstanding: int = 0  # what the stored lease row says this process holds
    free: int = 0
    held: int = 0
    spent: int = 0  # settled since the last sync (reported with the next one)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    overrun: int = 0
    inflight: int = 0  # calls admitted from this slice and not settled yet

    def fits(self, amount: int) -> bool:
        """True when a reservation of ``amount`` fits the free part."""
        return amount <= self.free

    def take(self, amount: int) -> None:
        """Reserve ``amount`` for one call (the caller checked ``fits``)."""
        if amount > self.free:
            raise ValueError("reservation exceeds the free slice")
        self.free -= amount
        self.held += amount
        self.inflight += 1

    def settle(self, amount: int, cost: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Replace a reservation by its actual cost; what it did not use is free again.

        A provider that overran its ``max_tokens`` costs more than the reservation: the
        excess comes out of ``free`` (which may go negative until the next sync, when
        the store takes it into account) and is recorded as overrun.
        """
        self.held -= amount
        self.inflight -= 1
        self.spent += cost
        self.free += amount - cost
        self.requests += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if cost > amount:
            self.overrun += cost - amount

    def report(self) -> Report:
        """What a sync planned now would report and replace (see ``synced``)."""
        return Report(
            free=self.free,
            spent=self.spent,
            requests=self.requests,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            overrun=self.overrun,
        )

    def synced(self, new_free: int, report: Report | None = None) -> int:
        """Apply a committed sync that reported ``report`` and resized ``free`` to ``new_free``.

        ``report`` is what the sync was planned on (default: the slice as it is now).
        Calls admitted and settled while the sync was in flight stay in the slice: they
        move ``free`` and add to what the next sync reports. Returns the change of the
        window's committed total (spent + leased) at the store, ``new_free - free``:
        the sync is admissible only if that fits.
        """
        planned = report or self.report()
        self.free += new_free - planned.free
        self.spent -= planned.spent
        self.requests -= planned.requests
        self.prompt_tokens -= planned.prompt_tokens
        self.completion_tokens -= planned.completion_tokens
        self.overrun -= planned.overrun
        self.outstanding = self.free + self.held + self.spent
        return new_free - planned.free

    @property
    def unreported(self) -> bool:
        """True when settled calls are waiting to be reported."""
        return self.requests > 0

    @property
    def drained(self) -> bool:
        """Nothing in flight, nothing to report and nothing free: the row can go."""
        return self.inflight == 0 and not self.unreported and self.free <= 0 and self.held == 0


@dataclass
class MinuteSlice:
    """One process's share of the current UTC minute's requests and tokens."""

    minute: str
    requests: int = 0  # admissions left in this slice
    tokens: int = 0  # tokens left in this slice

    def fits(self, tokens: int) -> bool:
        """True when one more call reserving ``tokens`` fits."""
        return self.requests >= 1 and tokens <= self.tokens

    def take(self, tokens: int) -> None:
        """Admit one call reserving ``tokens`` (the caller checked ``fits``)."""
        if not self.fits(tokens):
            raise ValueError("admission exceeds the minute slice")
        self.requests -= 1
        self.tokens -= tokens

    def give_back(self, tokens: int) -> None:
        """Reserved tokens the call did not use, reusable within the same minute."""
        self.tokens += tokens


def grant(*, available: int, demand: int, unit: int, share: float) -> int:
    """How much of ``available`` one process should hold next.

    ``demand`` is what the process expects to use before its next renewal and ``unit``
    what one typical call needs. The grant follows demand, takes at most ``share`` of
    what is left so that other instances find room, and is zero when even two calls'
    worth is not left: close to the limit, every decision goes to the store, so the
    last units go to whichever instance asks (exactly, as without leases).
    """
    if unit <= 0:
        unit = 1
    if available < 2 * unit:
        return 0
    wanted = max(demand, 2 * unit)
    return max(0, min(wanted, int(available * share)))
