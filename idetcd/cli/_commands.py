"""
What the ``idetcd`` command does: look at a node's cluster from outside the
node, through the etcd and the state directory its Corefile names.
"""

import json

import attr
from twisted.internet import defer

from idetcd.claim import NodeState, state_path
from idetcd.config import CorefileError
from idetcd.etcd import EtcdClient, EtcdError, EtcdSetupError, EtcdUnavailable
from idetcd.members import (
    Registry,
    lease_times,
    live_filter,
    member_order,
    next_change,
    read_members,
    when_members,
)
from idetcd.node import load
from idetcd.training import ClusterSpec, Local, SpecError, member_json
from idetcd.training.interfaces import interface_of
from idetcd.training.rounds import RoundKeeper

#: Exit statuses, as the README lists them.
EXIT_OK = 0
EXIT_ERROR = 1  # a bug: please report it
EXIT_USAGE = 2  # bad options or Corefile
EXIT_ETCD = 3  # etcd did not answer or refused; or the embedded etcd's node is not running
EXIT_NO_SPEC = 4  # env: this node holds no name now, or a member lacks its srv port
EXIT_TIMEOUT = 5  # wait: too few members before --timeout
EXIT_SPARE = 6  # env --nnodes: this node is not in the job's agreed round
EXIT_INTERRUPTED = 130  # stopped by a signal before it was done

#: How long one etcd request may take, per endpoint.
ETCD_TIMEOUT = 5.0
#: How long a round of N:M waits for more than N members, by default.
SETTLE = 10.0
#: How often env --nnodes looks at the state directory while this node
#: has not claimed its name yet.
HELD_RECHECK = 0.5


class CommandError(Exception):
    """
    The command cannot do what was asked: C{message} says why, C{status}
    is the exit status.
    """

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


@attr.s(frozen=True)
class NodeView:
    """
    A node as seen from outside: its Corefile server block and its state
    directory, as C{twistd idetcd} would use them.
    """

    block = attr.ib()
    state = attr.ib()

    @classmethod
    def load(cls, corefile, state_dir=None, port=None):
        try:
            blocks = [block for block in load(corefile) if block.idetcd is not None]
        except CorefileError as e:
            raise CommandError(EXIT_USAGE, str(e)) from None
        if len(blocks) != 1:
            raise CommandError(
                EXIT_USAGE,
                f"{corefile}: expected exactly one server block with idetcd, found {len(blocks)}",
            )
        return cls(blocks[0], NodeState(state_path(blocks[0], port, state_dir)))

    @property
    def settings(self):
        return self.block.idetcd

    @property
    def prefix(self):
        return self.settings.prefix.encode("utf-8")

    @property
    def zone(self):
        return self.settings.pattern.zone

    @property
    def embedded(self):
        return self.settings.endpoints == ("embedded",)

    def endpoints(self):
        """
        The etcd endpoints to read: the Corefile's, or for C{endpoint
        embedded} the one the running node recorded in its state directory.
        """
        if not self.embedded:
            return list(self.settings.endpoints)
        url = self.state.etcd_url()
        if url is None:
            raise CommandError(
                EXIT_ETCD,
                f"no node is running with state directory {self.state.path}: 'endpoint embedded'"
                " is that node's own etcd (start the node, or give its --state)",
            )
        return [url]

    def identity(self):
        return self.settings.node or self.state.existing_node_id()

    @property
    def role(self):
        return self.settings.pattern.role

    def unreachable(self, error):
        """
        The error for an etcd that did not answer.
        """
        if self.embedded:
            return CommandError(
                EXIT_ETCD,
                f"the embedded etcd of the node with state directory {self.state.path} does not"
                f" answer: is that node running? ({error})",
            )
        return CommandError(EXIT_ETCD, f"cannot read etcd: {error}")


def run_command(reactor, view, command, *args):
    """
    Run C{command(reactor, view, client, *args)} with a client to the
    node's etcd, closed afterwards; etcd's failures become L{CommandError}s.
    """
    settings = view.settings
    client = EtcdClient(
        view.endpoints(), reactor, timeout=ETCD_TIMEOUT, tls=settings.tls, credentials=settings.credentials
    )

    def translate(failure):
        if failure.check(EtcdSetupError):
            # A refused login or certificate, a wrong URL: not "no answer".
            raise CommandError(EXIT_ETCD, str(failure.value))
        if failure.check(EtcdUnavailable):
            raise view.unreachable(failure.value)
        if failure.check(EtcdError):
            raise CommandError(EXIT_ETCD, f"etcd refused a request: {failure.value}")
        return failure

    d = defer.maybeDeferred(command, reactor, view, client, *args).addErrback(translate)
    # A callback, not a generator's "finally": a command still pending when
    # a signal stops the reactor must not yield while it is collected.
    return d.addBoth(lambda result: client.close().addBoth(lambda _: result))


def _ttl_text(lease, times):
    if not lease:
        return "-"
    ttl = times.get(lease)
    return "gone" if ttl is None else f"{ttl}s"


def _table(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n"
        for row in rows
    )


@defer.inlineCallbacks
def members(reactor, view, client, out, as_json):
    """
    C{idetcd members}: every member of the zone, with its lease's time left.
    """
    found, revision = yield read_members(client, view.prefix, view.zone)
    listed = sorted(found.values(), key=member_order)
    times = yield lease_times(client, [member.lease for member in listed])
    if as_json:
        entries = [dict(member_json(m), ttl=times.get(m.lease)) for m in listed]
        out.write(json.dumps({"zone": view.zone, "revision": revision, "members": entries}, indent=2) + "\n")
        return
    rows = [("NAME", "ROLE", "SLOT", "ADDRESSES", "SRV", "NODE", "LEASE LEFT")]
    rows.extend(
        (
            m.name,
            m.role,
            str(m.slot),
            ",".join(m.ipv4 + m.ipv6),
            str(m.srv or "-"),
            m.node or "-",
            _ttl_text(m.lease, times),
        )
        for m in listed
    )
    out.write(_table(rows))


@attr.s(frozen=True)
class RoundRequest:
    """
    What C{--nnodes N[:M]} and its companions ask for: a round of C{job}
    (C{None}: the node's role) with C{low} to C{high} members, numbered
    above C{after}, waiting C{settle} seconds for more than C{low}, and at
    most C{timeout} seconds in all (C{None}: for ever).
    """

    low = attr.ib()
    high = attr.ib()
    job = attr.ib(default=None)
    settle = attr.ib(default=SETTLE)
    after = attr.ib(default=0)
    timeout = attr.ib(default=None)


def _following(reactor, view, client, use, timeout, timed_out, patient=True):
    """
    Run C{use(registry)} with a registry following the node's prefix,
    stopped afterwards; after C{timeout} seconds (C{None}: never), fail with
    L{CommandError}: C{view.unreachable} if etcd was never read, else
    C{timed_out(registry)}.  A registry retries whatever etcd says, so one
    read comes first: a refusal (a login, a certificate: an
    L{EtcdSetupError}) fails at once, and an etcd that does not answer
    yet is waited for only when C{patient}.
    """
    registry = Registry(client, view.prefix, reactor)

    def first_read_failed(failure):
        if failure.check(EtcdSetupError) or not patient:
            return failure
        return None  # not answering yet: the registry retries

    def follow(_):
        registry.startService()
        return use(registry)

    def translate(failure):
        failure.trap(defer.TimeoutError)
        if not registry.ready:
            raise view.unreachable(f"no answer from {', '.join(client.endpoints)} in {timeout:g}s")
        raise timed_out(registry)

    d = client.range(view.prefix).addCallbacks(lambda _: None, first_read_failed).addCallback(follow)
    if timeout is not None:
        d.addTimeout(timeout, reactor).addErrback(translate)
    # A callback, not a generator's "finally": see run_command.
    return d.addBoth(lambda result: (registry.stopService(), result)[1])


def _say(err, text):
    err.write(f"idetcd: {text}\n")
    err.flush()


@defer.inlineCallbacks
def wait(reactor, view, client, out, err, count, role, timeout, as_json, request=None):
    """
    C{idetcd wait}: return once C{count} members of C{role} are present,
    following etcd's watch; L{CommandError} after C{timeout} seconds.  With
    C{request} (a L{RoundRequest}), return the job's agreed round instead.
    """
    if request is not None:
        found, _ = yield _agree(reactor, view, client, err, request)
        members, extra = found.members, {"job": found.job, "round": found.number}
    else:
        members = yield _following(
            reactor, view, client,
            lambda registry: _enough(view, registry, err, count, role),
            timeout,
            lambda registry: CommandError(
                EXIT_TIMEOUT,
                f"timed out after {timeout:g}s: {_present(view, registry, role)} of {count}"
                f" live {_what(role)} present in {view.zone}",
            ),
        )
        extra = {}
    if as_json:
        entries = [member_json(m) for m in members]
        out.write(json.dumps({"zone": view.zone, **extra, "members": entries}, indent=2) + "\n")
    else:
        out.write("".join(member.name + "\n" for member in members))


def _what(role):
    return f"{role} members" if role else "members"


def _present(view, registry, role):
    wanted = live_filter(registry, role, view.zone)
    return sum(1 for member in registry.members.values() if wanted(member))


def _enough(view, registry, err, count, role):
    enough = when_members(registry, count, role, view.zone)

    def waiting(_):
        if not enough.called:
            present = _present(view, registry, role)
            _say(err, f"waiting for {count} {_what(role)} in {view.zone} ({present} present)")

    ready = registry.when_ready().addCallback(waiting)
    ready.addErrback(lambda failure: failure.trap(defer.CancelledError))
    return enough.addBoth(lambda result: (ready.cancel(), result)[1])


def _keeper(reactor, view, client, registry, job):
    return RoundKeeper(client, registry, reactor, view.prefix, job or view.role, view.role, view.zone)


@defer.inlineCallbacks
def _agree(reactor, view, client, err, request, for_node=False):
    """
    The job's agreed round (see L{RoundKeeper.agree}), and, C{for_node},
    this node's member: the round waits until this node holds its name.
    """
    live = []
    own = []

    def waiting(count):
        if live != [count]:
            live[:] = [count]
            _say(err, f"waiting for {request.low} live {view.role} members in {view.zone} ({count} live)")

    @defer.inlineCallbacks
    def agree(registry):
        yield registry.when_ready()
        if for_node:
            own.append((yield _held(reactor, view, registry, err)))
        keeper = _keeper(reactor, view, client, registry, request.job)
        name = own[0].name if own else None
        found = yield keeper.agree(request.low, request.high, request.settle, request.after, waiting, name)
        if not own:
            return found, None
        # The member as it is now: the node may have claimed again, on
        # another lease, while the round was being agreed.
        now = registry.members.get(name)
        return found, (now if now is not None and now.node == own[0].node else own[0])

    def timed_out(registry):
        if for_node and not own:
            return CommandError(
                EXIT_NO_SPEC, f"timed out after {request.timeout:g}s: this node holds no name (is its node started?)"
            )
        return CommandError(
            EXIT_TIMEOUT,
            f"timed out after {request.timeout:g}s: {live[0] if live else '?'} of {request.low} live"
            f" {view.role} members present in {view.zone}",
        )

    return (yield _following(reactor, view, client, agree, request.timeout, timed_out))


@defer.inlineCallbacks
def _held(reactor, view, registry, err):
    """
    This node's member once it holds a name: the one its state directory
    records, held in etcd under its identity.  A node still starting
    claims within seconds: a job started beside it waits for that.
    """
    said = False
    while True:
        name = view.state.last_name()
        member = registry.members.get(name) if name else None
        if member is not None and member.node == view.identity():
            return member
        if not said:
            said = True
            _say(err, f"waiting for this node to hold a name (state directory {view.state.path})")
        yield next_change(registry, reactor, HELD_RECHECK)


@defer.inlineCallbacks
def round_(reactor, view, client, out, job, as_json):
    """
    C{idetcd round}: the job's round as etcd holds it now, whether it
    stands, and which live members of the role are not in it.
    """

    @defer.inlineCallbacks
    def look(registry):
        yield registry.when_ready()
        keeper = _keeper(reactor, view, client, registry, job)
        found, _ = keeper.current()
        return keeper.job, found, found is not None and keeper.standing(found), keeper.outside(found)

    name, found, standing, waiting = yield _following(reactor, view, client, look, None, None, patient=False)
    members = found.members if found else ()
    if as_json:
        report = {
            "job": name,
            "round": found.number if found else 0,
            "members": [member_json(m) for m in members],
            "alive": standing,
            "waiting": [m.name for m in waiting],
        }
        out.write(json.dumps(report, indent=2) + "\n")
        return
    if found is None:
        out.write(f"job {name}: no round yet; {len(waiting)} live {view.role} members\n")
        return
    state = "standing" if standing else "ended (a member died or left)"
    out.write(f"job {name}: round {found.number}, {state}\n")
    out.write("".join(f"{rank} {m.name}\n" for rank, m in enumerate(members)))
    if waiting:
        out.write(f"not in the round: {' '.join(m.name for m in waiting)}\n")


def _own(view, name, member):
    """
    C{member}, the member etcd holds at this node's last name, if this node
    holds it; else L{CommandError}.
    """
    identity = view.identity()
    if member is None:
        raise CommandError(
            EXIT_NO_SPEC,
            f"this node holds no name now: it last held {name}, which etcd no longer has"
            " (is its node running?)",
        )
    if member.node != identity:
        raise CommandError(
            EXIT_NO_SPEC,
            f"this node holds no name now: it last held {name}, which node {member.node or '?'}"
            f" holds, not this node ({identity})",
        )
    return member


def _local(member):
    address = (member.ipv4 + member.ipv6)[0]
    return Local(address, interface_of(address))


@defer.inlineCallbacks
def env(reactor, view, client, out, err, form, slots=1, addresses=False, request=None):
    """
    C{idetcd env}: this node's cluster spec, once etcd confirms that the
    name its state directory records is held by this node.  With
    C{request} (a L{RoundRequest}), the spec of the job's agreed round, or
    L{CommandError} with L{EXIT_SPARE} when this node is not in it.
    """
    if request is None:
        name = view.state.last_name()
        if name is None:
            raise CommandError(
                EXIT_NO_SPEC,
                f"this node has not held a name: its state directory {view.state.path} records none"
                " (is its node started, with this --state?)",
            )
        found, _ = yield read_members(client, view.prefix, view.zone)
        member = _own(view, name, found.get(name))
        members, extra = found.values(), {}
    else:
        agreed, member = yield _agree(reactor, view, client, err, request, for_node=True)
        name = member.name
        # In a round that stands, every member holds its name on the lease
        # it was admitted with: this node's now, if it is in the round.
        if agreed.rank(member) is None:
            listed = " ".join(m.name for m in agreed.members)
            raise CommandError(
                EXIT_SPARE,
                f"spare: {name} is not in round {agreed.number} of job {agreed.job!r}"
                f" ({len(agreed.members)} members: {listed})",
            )
        members, extra = agreed.members, {"job": agreed.job, "round": agreed.number}
    try:
        spec = ClusterSpec.of(members, name, local=_local(member), **extra)
        text = spec.render(form, slots, addresses)
    except SpecError as e:
        raise CommandError(EXIT_NO_SPEC, str(e)) from None
    out.write(text)
