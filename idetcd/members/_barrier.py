"""
A barrier on membership: a Deferred that fires once enough live members
(of one role) are present, for ``node.when_members`` and ``idetcd wait``.
A member marked dead (see L{idetcd.training.liveness}) does not count.

It follows the registry's changes, so it costs one pass over the members
when it starts and then only the names that changed: thousands of members
coming up together cost each waiter what they change, not the cluster's
size per change.
"""

from twisted.internet import defer

from idetcd.members._record import member_order


def in_zone(name, zone):
    """
    Whether C{name} lies in C{zone} (both absolute); any zone for C{None}.
    """
    return zone is None or name.endswith("." + zone)


def member_filter(role=None, zone=None):
    """
    A test for members of C{role} in C{zone} (C{None}: any), that is false
    for C{None}, a member that is not there.
    """
    return lambda member: (
        member is not None and (role is None or member.role == role) and in_zone(member.name, zone)
    )


def live_filter(registry, role=None, zone=None):
    """
    A test for members of C{role} in C{zone} that C{registry} holds and
    does not know dead.
    """
    wanted = member_filter(role, zone)
    return lambda member: wanted(member) and not registry.is_dead(member)


def when_members(registry, count, role=None, zone=None):
    """
    Fire with the live members of C{role} (every role for C{None}) in
    C{zone}, by role then slot, once C{registry} has read etcd and holds at
    least C{count} of them.  Cancelling the Deferred stops following
    changes.
    """
    wanted = live_filter(registry, role, zone)
    present = {name for name, member in registry.members.items() if wanted(member)}

    def check():
        if registry.ready and len(present) >= count and not d.called:
            unsubscribe()
            d.callback(sorted((registry.members[name] for name in present), key=member_order))

    def changed(names):
        for name in names:
            if wanted(registry.members.get(name)):
                present.add(name)
            else:
                present.discard(name)
        check()

    d = defer.Deferred(lambda _: unsubscribe())
    unsubscribe = registry.subscribe_changes(changed)
    check()
    return d


def next_change(registry, reactor, delay=None):
    """
    Fires at C{registry}'s next change under its prefix, or after C{delay}
    seconds (C{None}: never), whichever comes first; cancelling it cancels
    both.
    """
    changed = registry.when_caught_up(registry.applied + 1)
    if delay is None:
        return changed
    timer = reactor.callLater(delay, changed.cancel)

    def settled(result):
        if timer.active():
            timer.cancel()
            return result  # a change, or the caller's cancel
        return None  # the timer's own cancel: time to look again

    return changed.addBoth(settled)
