"""
Every claimed name under the etcd prefix, held in memory.

One range read fills it and one watch keeps it current, so answering a DNS
query never waits on etcd.  While etcd is unreachable the registry keeps what
it last knew; the watch resumes from the last revision it applied, and only a
compaction makes it read everything again.
"""

import attr
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger, LogLevel

from idetcd.common import Backoff, RateLimitedLog
from idetcd.etcd import ResyncNeeded, prefix_range_end
from idetcd.members._record import Member
from idetcd.names import normalize_name

log = Logger()

#: Below the prefix, every key that starts with "_" is idetcd's own
#: bookkeeping (the claim queue, the dead marks, the training jobs'
#: rounds), not a name; "_" is never in a host name.
BOOKKEEPING = b"_"
#: Below the prefix, a mark that a member's holder stopped renewing its
#: lease (see L{idetcd.training.liveness}): one key per name, on the
#: member's own lease, so it goes with it.
DEAD = b"_dead/"

#: Below the prefix, each training job's current round (see
#: L{idetcd.training.rounds}).
JOBS = b"_jobs/"


def dead_key(prefix, name):
    """
    The key of the mark that the member holding C{name} is dead.
    """
    return prefix + DEAD + name.encode("ascii")


def member_from(prefix, kv):
    """
    The member that C{kv}, read under C{prefix}, holds; C{None} for a key
    that is not a name (idetcd's bookkeeping, or, with prefix "", one of
    etcd's other keys, which are not ours to judge).  L{ValueError} says
    what is wrong with a value that is not a valid record.
    """
    if kv.key.startswith(prefix + BOOKKEEPING) or (not prefix and not kv.key.endswith(b".")):
        return None
    name = normalize_name(kv.key[len(prefix) :].decode("ascii"))
    return Member.from_value(name, kv.value, lease=kv.lease)


@attr.s(eq=False)
class Registry(Service):
    """
    The members under C{prefix}, by name (absolute, lower case).

    Subscribers are called after every change to C{members}: those of
    L{subscribe_changes} first, with the names that changed, then those of
    L{subscribe}, with no arguments.  Those of L{subscribe_jobs} follow the
    bookkeeping keys below one sub-prefix instead, and so do those of
    L{follow} (the claim queue's).  C{revision} is the etcd revision of
    the last change to C{members}, and grows with every change; writes to
    other keys in the watched range (every key in etcd, with prefix "")
    move only C{applied}, the revision everything has been read up to.
    A member marked dead stays in C{members} (its name is answered until
    etcd drops it); L{is_dead} tells, and change subscribers hear of the
    mark as a change of its name.  C{unheard_since} is when the registry
    lost etcd (its watch broke, or a full read failed), L{None} while it
    follows etcd; those of L{subscribe_contact} hear when it changes.
    """

    client = attr.ib()
    prefix = attr.ib()
    reactor = attr.ib()
    backoff = attr.ib(factory=Backoff)
    #: How often, at most, a failed read of every member is logged.
    warn_interval = attr.ib(default=30.0)
    members = attr.ib(factory=dict, init=False)
    dead = attr.ib(factory=dict, init=False)  # name -> the lease marked dead
    jobs = attr.ib(factory=dict, init=False)  # key under JOBS -> KeyValue
    revision = attr.ib(default=0, init=False)
    applied = attr.ib(default=0, init=False)
    unheard_since = attr.ib(default=None, init=False)
    _names = attr.ib(factory=dict, init=False)  # key -> name
    _bad = attr.ib(factory=dict, init=False)  # key -> mod_revision logged
    _subscribers = attr.ib(factory=list, init=False)
    _change_subscribers = attr.ib(factory=list, init=False)
    _job_subscribers = attr.ib(factory=list, init=False)
    _contact_subscribers = attr.ib(factory=list, init=False)
    _changed_names = attr.ib(factory=set, init=False)
    _progress_waiters = attr.ib(factory=list, init=False)
    _followers = attr.ib(factory=list, init=False)  # (prefix + sub-prefix, callback)
    _followed = attr.ib(factory=dict, init=False)  # key -> KeyValue, below a follower's
    _ready = attr.ib(default=False, init=False)
    _watch = attr.ib(default=None, init=False)
    _loading = attr.ib(default=None, init=False)
    _retry = attr.ib(default=None, init=False)
    _warn = attr.ib(init=False)

    def __attrs_post_init__(self):
        self._warn = RateLimitedLog(self.reactor, log, self.warn_interval, LogLevel.warn)

    @property
    def ready(self):
        """
        Whether C{members} holds what etcd held at some point: false only
        until the first full read.
        """
        return self._ready

    def when_ready(self):
        """
        Fires once the first full read has been applied.
        """
        return self._when(lambda: self._ready)

    def when_caught_up(self, revision):
        """
        Fires once every change up to C{revision} has been applied.
        """
        return self._when(lambda: self._ready and self.applied >= revision)

    def _when(self, condition):
        if condition():
            return defer.succeed(self)
        def cancel(d):
            if entry in self._progress_waiters:
                self._progress_waiters.remove(entry)

        entry = (condition, defer.Deferred(cancel))
        self._progress_waiters.append(entry)
        return entry[1]

    def _progressed(self):
        waiting, self._progress_waiters = self._progress_waiters, []
        for condition, d in waiting:
            if d.called:
                continue  # cancelled by its waiter
            if condition():
                d.callback(self)
            else:
                self._progress_waiters.append((condition, d))

    def is_dead(self, member):
        """
        Whether C{member}, on its lease, is marked dead.
        """
        return bool(member.lease) and self.dead.get(member.name) == member.lease

    def is_free(self, name):
        """
        Whether no key holds C{name}: neither a member nor a garbage value.
        """
        return name not in self.members and self.prefix + name.encode("ascii") not in self._bad

    def subscribe(self, callback):
        """
        Call C{callback()} after every change; returns a function that stops
        the calls.
        """
        return self._add(self._subscribers, callback)

    def subscribe_changes(self, callback):
        """
        Call C{callback(names)} after every change, before the subscribers
        of L{subscribe}: C{names} is the set of names added, changed or
        removed (empty when only the revision moved).  Returns a function
        that stops the calls.
        """
        return self._add(self._change_subscribers, callback)

    def subscribe_jobs(self, callback):
        """
        Call C{callback(key, kv)} whenever a training job's record (a key
        of C{jobs}) is put, and C{callback(key, None)} when it is deleted:
        as the watch applies them, and, after a full read (a compaction the
        watch could not resume from), for every record that changed
        meanwhile.  Returns a function that stops the calls.
        """
        return self._add(self._job_subscribers, callback)

    def follow(self, sub_prefix, callback):
        """
        Call C{callback(key, kv)} for every bookkeeping key below
        C{sub_prefix}, such as the claim queue's (not the dead marks' nor the
        jobs', which the registry keeps itself): now for those known, then
        as the watch puts them, and C{callback(key, None)} as they are
        deleted (a full read deletes those it did not find).  Calls come as
        each change is applied, before any subscriber hears of it and before
        L{when_caught_up} fires for its revision.  Returns a function that
        stops the calls.
        """
        start = self.prefix + sub_prefix
        if not start.startswith(self.prefix + BOOKKEEPING):
            raise ValueError(f"{sub_prefix!r} is not below idetcd's bookkeeping ({BOOKKEEPING!r})")
        for key, kv in list(self._followed.items()):
            if key.startswith(start):
                callback(key, kv)
        return self._add(self._followers, (start, callback))

    def _tell_followers(self, key, kv):
        for start, callback in list(self._followers):
            if key.startswith(start):
                callback(key, kv)

    def subscribe_contact(self, callback):
        """
        Call C{callback()} whenever C{unheard_since} changes; returns a
        function that stops the calls.
        """
        return self._add(self._contact_subscribers, callback)

    def _contact(self, live):
        if live == (self.unheard_since is None):
            return
        self.unheard_since = None if live else self.reactor.seconds()
        for callback in list(self._contact_subscribers):
            try:
                callback()
            except Exception:
                log.failure("registry contact subscriber failed")

    def _tell_job(self, key, kv):
        for callback in list(self._job_subscribers):
            try:
                callback(key, kv)
            except Exception:
                log.failure("registry job subscriber failed")

    @staticmethod
    def _add(subscribers, callback):
        subscribers.append(callback)
        return lambda: subscribers.remove(callback) if callback in subscribers else None

    def startService(self):
        Service.startService(self)
        self._load()

    def stopService(self):
        Service.stopService(self)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._loading is not None:
            self._loading.cancel()
        if self._watch is not None:
            self._watch.stop()
            self._watch = None

    def _load(self):
        self._retry = None
        self._loading = self.client.range_paged(self.prefix, prefix_range_end(self.prefix))
        self._loading.addCallbacks(self._loaded, self._load_failed)

    def _load_failed(self, failure):
        self._loading = None
        if failure.check(defer.CancelledError) or not self.running:
            return
        self._contact(False)
        delay = self.backoff.next()
        self._warn(
            "load",
            "cannot read members from etcd ({error}); answering from what is known, retrying in {delay:.2f}s",
            error=failure.getErrorMessage(),
            delay=delay,
        )
        self._retry = self.reactor.callLater(delay, self._load)

    def _loaded(self, result):
        self._loading = None
        kvs, revision = result
        self.backoff.reset()
        self._warn.reset("load")
        present = {kv.key for kv in kvs}
        jobs_before = dict(self.jobs)
        for key in list(self._followed):
            if key not in present:
                self._forget(key)
        for key in [*self._names, *self.jobs, *(dead_key(self.prefix, name) for name in self.dead)]:
            if key not in present:
                self._forget(key)
        for kv in kvs:
            self._put(kv)
        self._advance(revision)
        # Exactly what was read: after etcd went back in time this is lower
        # than before, and waiters for the old revisions wait for new ones.
        self.applied = revision
        self._ready = True
        log.info(
            "read {count} members under {prefix!r} at revision {revision}",
            count=len(self.members),
            prefix=self.prefix.decode("utf-8", "replace"),
            revision=revision,
        )
        # Watch before telling subscribers, who may stop this registry.
        self._watch = self.client.watch(
            self.prefix, prefix_range_end(self.prefix), revision + 1, self._events, self._contact
        )
        self._watch.done.addErrback(self._watch_failed)
        self._contact(True)
        self._changed()
        for key in set(jobs_before) | set(self.jobs):
            kv = self.jobs.get(key)
            if kv != jobs_before.get(key):
                self._tell_job(key, kv)
        self._progressed()

    def _watch_failed(self, failure):
        failure.trap(ResyncNeeded)
        log.warn("watch cannot resume ({why}); reading every member again", why=failure.getErrorMessage())
        self._watch = None
        if self.running:
            self._contact(False)
            self._load()

    def _events(self, events, revision):
        changed = False
        for event in events:
            if event.deleted:
                changed |= self._forget(event.kv.key)
            else:
                changed |= self._put(event.kv)
            if event.kv.key.startswith(self.prefix + JOBS):
                self._tell_job(event.kv.key, None if event.deleted else event.kv)
        self.applied = max(self.applied, revision)
        if changed:
            # Writes to other keys (every key in etcd, with prefix "") do
            # not move the zone.
            self._advance(revision)
            self._changed()
        elif self._changed_names:
            self._changed()  # dead marks: no change to the zone's records
        self._progressed()

    def _advance(self, revision):
        # Normally etcd's revision.  After etcd went back in time it is still
        # moved forward, since the zone's SOA serial and cached views follow it.
        self.revision = max(self.revision + 1, revision)

    def _put(self, kv):
        """
        Apply a put; returns whether C{members} changed.
        """
        if kv.key.startswith(self.prefix + DEAD):
            name = kv.key[len(self.prefix + DEAD) :].decode("ascii", "replace")
            self.dead[name] = kv.lease
            self._changed_names.add(name)
            return False
        if kv.key.startswith(self.prefix + JOBS):
            self.jobs[kv.key] = kv
            return False
        if kv.key.startswith(self.prefix + BOOKKEEPING):
            self._followed[kv.key] = kv
            self._tell_followers(kv.key, kv)
            return False
        try:
            member = member_from(self.prefix, kv)
        except ValueError as e:
            logged = self._bad.get(kv.key) is not None
            was_member = self._forget(kv.key)
            if not logged:
                log.warn(
                    "skipping {key!r} in etcd: {error}",
                    key=kv.key.decode("utf-8", "replace"),
                    error=str(e),
                )
            self._bad[kv.key] = kv.mod_revision
            return was_member
        if member is None:
            return False
        name = member.name
        self._bad.pop(kv.key, None)
        self._names[kv.key] = name
        if self.members.get(name) == member:
            return False
        self._changed_names.add(name)
        self.members[name] = member
        return True

    def _forget(self, key):
        """
        Drop C{key}'s member, if it has one; returns whether it had.
        """
        self._bad.pop(key, None)
        if self._followed.pop(key, None) is not None:
            self._tell_followers(key, None)
        self.jobs.pop(key, None)
        if key.startswith(self.prefix + DEAD):
            name = key[len(self.prefix + DEAD) :].decode("ascii", "replace")
            if self.dead.pop(name, None) is not None:
                self._changed_names.add(name)
            return False
        name = self._names.pop(key, None)
        if name is None or self.members.pop(name, None) is None:
            return False
        self._changed_names.add(name)
        return True

    def _changed(self):
        names, self._changed_names = frozenset(self._changed_names), set()
        for callback in list(self._change_subscribers):
            try:
                callback(names)
            except Exception:
                log.failure("registry subscriber failed")
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:
                log.failure("registry subscriber failed")
