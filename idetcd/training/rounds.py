"""
Agreed rounds: one world per training job, written once in etcd, so that
every node that asks gets the same members in the same order.

A round of a job is recorded under the prefix at C{_jobs/JOB} with one
transaction that succeeds only if the key is still as the writer read it,
so of any number of nodes proposing a round at once exactly one writes it
and the others read it.  A round stands while every member of it holds its
name on the lease it was admitted with and is not marked dead (see
L{idetcd.training.liveness}); once one has died or left, the next node
that asks writes the next round without it.  Everything is read from the
registry's memory (its watch covers the records and the dead marks):
asking costs no read and, for a new round, one write, whatever the size
of the job.  Admission is deterministic: once at least C{low} live
members of the role are present (and, below C{high}, once C{settle}
seconds have passed or C{high} are present), the round takes up to C{high}
live members, lowest slots first.  A member's rank in a round is its
position in it.
"""

import json

import attr
from twisted.internet import defer
from twisted.logger import Logger

from idetcd.members import (
    JOBS,
    Member,
    live_filter,
    member_order,
    next_change,
    when_members,
)

log = Logger()


#: How long, per place in a new round, an asker waits for the members
#: before it to propose the round before it proposes it itself; askers
#: outside the round wait as long as its PROPOSERS-th member.
PROPOSER_DELAY = 0.2
PROPOSERS = 10


def round_key(prefix, job):
    """
    The etcd key holding C{job}'s current round.
    """
    return prefix + JOBS + job.encode("utf-8")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Round:
    """
    One agreed world of a job: its members in rank order (each with the
    lease it was admitted on), the round's number, and the etcd revision
    it was written at.
    """

    job: str
    number: int
    members: tuple
    revision: int = 0

    def rank(self, member):
        """
        The rank of C{member} in this round, or C{None} if it is not in it
        on the same lease.
        """
        for rank, listed in enumerate(self.members):
            if listed.name == member.name and listed.lease == member.lease:
                return rank
        return None

    def to_value(self):
        return json.dumps(
            {
                "job": self.job,
                "round": self.number,
                "members": [
                    {"name": m.name, "lease": f"{m.lease:x}", "value": json.loads(m.to_value())}
                    for m in self.members
                ],
            },
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def from_kv(cls, kv):
        """
        The round C{kv} holds; L{ValueError} says what is wrong with a value
        that is not one.
        """
        try:
            data = json.loads(kv.value)
            members = tuple(
                Member.from_value(entry["name"], json.dumps(entry["value"]), lease=int(entry["lease"], 16))
                for entry in data["members"]
            )
            number = data["round"]
            job = data["job"]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a round record: {e!r}") from None
        if not isinstance(number, int) or number < 1 or not isinstance(job, str):
            raise ValueError("not a round record: round must be a positive integer, job a string")
        return cls(job, number, members, kv.mod_revision)


def round_of(job, kv):
    """
    The L{Round} of C{job} that C{kv} holds, or C{None} (logged) if its
    value is not one: a garbage value is skipped, as for names.
    """
    try:
        return Round.from_kv(kv)
    except ValueError as e:
        log.warn("skipping the round of job {job!r} in etcd: {error}", job=job, error=str(e))
        return None


def _place(name, members):
    """
    How many members of a proposed round come before C{name}'s, at most
    L{PROPOSERS}.
    """
    for place, member in enumerate(members[:PROPOSERS]):
        if member.name == name:
            return place
    return PROPOSERS


def parse_nnodes(text):
    """
    C{N} or C{N:M} as C{(N, M)}; L{ValueError} unless 1 <= N <= M.
    """
    low, colon, high = text.partition(":")
    try:
        low = int(low)
        high = int(high) if colon else low
    except ValueError:
        raise ValueError(f"expected N or N:M (whole numbers), got {text!r}") from None
    if not 1 <= low <= high:
        raise ValueError(f"expected N or N:M with 1 <= N <= M, got {text!r}")
    return low, high


@attr.s(eq=False)
class RoundKeeper:
    """
    Reads and agrees the rounds of C{job}, whose members are the live
    members of C{role} in C{zone}, as the L{Registry} C{registry} (of
    C{client}, under C{prefix}) knows them.
    """

    client = attr.ib()
    registry = attr.ib()
    reactor = attr.ib()
    prefix = attr.ib()
    job = attr.ib()
    role = attr.ib()
    zone = attr.ib()

    @property
    def key(self):
        return round_key(self.prefix, self.job)

    def current(self):
        """
        The job's round as the registry knows it, or C{None}, and the key's
        L{KeyValue} (C{None} when absent).
        """
        kv = self.registry.jobs.get(self.key)
        return (None if kv is None else round_of(self.job, kv)), kv

    def standing(self, round_):
        """
        Whether every member of C{round_} still holds its name on the lease
        it was admitted with, and is not marked dead.
        """
        members = self.registry.members
        return all(
            (held := members.get(m.name)) is not None and held.lease == m.lease and not self.registry.is_dead(m)
            for m in round_.members
        )

    def live(self):
        """
        The live members of the role, lowest slots first.
        """
        alive = live_filter(self.registry, self.role, self.zone)
        return sorted((m for m in self.registry.members.values() if alive(m)), key=member_order)

    def outside(self, round_):
        """
        The live members of the role not in C{round_} (C{None}: no round),
        lowest slots first: the ones a new round could take in.
        """
        return [m for m in self.live() if round_ is None or round_.rank(m) is None]

    @defer.inlineCallbacks
    def agree(self, low, high, settle=0.0, after=0, on_waiting=None, own=None):
        """
        The job's round once agreed: the current one if it is numbered above
        C{after} and still standing, else a new one written by this call or
        by another node's.  C{on_waiting(live)} is told how many live
        members there are while fewer than C{low}.  C{own} is the name of
        the asking node, if it is one: the first member of a new round
        proposes it at once, the others give those before them
        L{PROPOSER_DELAY} seconds each to, so that a thousand askers cost
        etcd one transaction.
        """
        settle_from = None
        deferred = False
        yield self.registry.when_ready()
        while True:
            current, kv = self.current()
            if current is not None and current.number > after and self.standing(current):
                return current
            chosen = self.live()[:high]
            now = self.reactor.seconds()
            if len(chosen) < low:
                settle_from = None
                if on_waiting is not None:
                    on_waiting(len(chosen))
                # Members come one change at a time: count them as they
                # come, not by a look at every member per change.
                yield when_members(self.registry, low, self.role, self.zone)
                continue
            elif len(chosen) < high and settle > 0 and (settle_from is None or now - settle_from < settle):
                # Enough to start, but more may be on their way.
                if settle_from is None:
                    settle_from = now
            elif not deferred and (place := _place(own, chosen)):
                # Until the record changes: other writes under the prefix
                # (claims, marks, other jobs) do not end the turn.
                deferred = True
                until = now + place * PROPOSER_DELAY
                while self.registry.jobs.get(self.key) is kv and self.reactor.seconds() < until:
                    yield next_change(self.registry, self.reactor, until - self.reactor.seconds())
                continue
            else:
                number = max(current.number if current else 0, after) + 1
                proposal = Round(self.job, number, tuple(chosen))
                # The registry may lag behind a round proposed meanwhile:
                # a read without the value says, before a transaction.
                written = yield self.client.mod_revision(self.key)
                if written != (kv.mod_revision if kv else 0):
                    yield self._caught_up(written)
                    continue
                result = yield self.client.create(self.key, proposal.to_value(), replacing=kv)
                if result.succeeded:
                    log.info(
                        "agreed round {number} of job {job!r}: {names}",
                        number=number,
                        job=self.job,
                        names=" ".join(m.name for m in chosen),
                    )
                    return attr.evolve(proposal, revision=result.revision)
                # Another node wrote a round meanwhile: read it.
                yield self._caught_up(result.existing.mod_revision if result.existing else 0)
                continue
            # Deaths are marked in etcd: every change is an event.
            delay = None if settle_from is None else max(0.0, settle_from + settle - now)
            yield next_change(self.registry, self.reactor, delay)

    def _caught_up(self, written):
        """
        Fires once the registry has the job's record as written at revision
        C{written} (0: deleted), a write under the prefix: not etcd's
        revision, which other users of etcd move.
        """
        return self.registry.when_caught_up(written or self.registry.applied + 1)
