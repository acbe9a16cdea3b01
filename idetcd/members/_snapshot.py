"""
One consistent read of a zone's members, and the time left on their leases:
what ``idetcd members`` and ``idetcd env`` show.
"""

from twisted.internet import defer
from twisted.logger import Logger

from idetcd.etcd import LeaseNotFound, prefix_range_end
from idetcd.members._barrier import in_zone
from idetcd.members._registry import member_from

log = Logger()

#: Lease lookups in flight at once: enough to list thousands of members in
#: seconds, few enough not to crowd etcd out for the nodes.
LEASE_LOOKUPS = 16


@defer.inlineCallbacks
def read_members(client, prefix, zone):
    """
    Every member under C{prefix} in C{zone}, by name, read in pages at one
    revision; returns the members and that revision.  Garbage values are
    logged and skipped, as the nodes do.
    """
    kvs, revision = yield client.range_paged(prefix, prefix_range_end(prefix))
    members = {}
    for kv in kvs:
        try:
            member = member_from(prefix, kv)
        except ValueError as e:
            log.warn("skipping {key!r} in etcd: {error}", key=kv.key.decode("utf-8", "replace"), error=str(e))
            continue
        if member is not None and in_zone(member.name, zone):
            members[member.name] = member
    return members, revision


@defer.inlineCallbacks
def lease_times(client, leases, concurrency=LEASE_LOOKUPS):
    """
    The seconds left on each of C{leases} (0, no lease, is skipped), as
    {lease: seconds, or C{None} for a lease gone since}, asking etcd with at
    most C{concurrency} lookups in flight.  The first failure cancels the
    rest and is raised.
    """
    pending = iter(sorted(set(leases) - {0}))
    times = {}

    @defer.inlineCallbacks
    def lookups():
        for lease in pending:  # shared: each lease is taken by one worker
            try:
                info = yield client.lease_time_to_live(lease)
            except LeaseNotFound:
                times[lease] = None
            else:
                times[lease] = info.ttl

    workers = [lookups() for _ in range(concurrency)]
    try:
        yield defer.gatherResults(workers, consumeErrors=True)
    except defer.FirstError as e:
        for worker in workers:
            worker.cancel()
        e.subFailure.raiseException()
    return times
