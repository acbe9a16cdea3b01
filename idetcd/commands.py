"""
What the ``idetcd`` command does: look at a node's cluster from outside the
node, through the etcd and the state directory its Corefile names.
"""

import json

import attr
from twisted.internet import defer

from idetcd.clusterspec import ClusterSpec, SpecError, member_json, member_order
from idetcd.corefile import CorefileError, load
from idetcd.etcd import EtcdClient, EtcdError, EtcdUnavailable
from idetcd.membership import member_filter, when_members
from idetcd.registry import Registry
from idetcd.state import NodeState, state_path
from idetcd.snapshot import lease_times, read_members

#: Exit statuses, as the README lists them.
EXIT_OK = 0
EXIT_ERROR = 1  # a bug: please report it
EXIT_USAGE = 2  # bad options or Corefile
EXIT_ETCD = 3  # etcd did not answer or refused; or the embedded etcd's node is not running
EXIT_NO_SPEC = 4  # env: this node holds no name now, or a member lacks its srv port
EXIT_TIMEOUT = 5  # wait: too few members before --timeout
EXIT_INTERRUPTED = 130  # stopped by a signal before it was done

#: How long one etcd request may take, per endpoint.
ETCD_TIMEOUT = 5.0


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
    client = EtcdClient(view.endpoints(), reactor, timeout=ETCD_TIMEOUT)

    def translate(failure):
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


@defer.inlineCallbacks
def wait(reactor, view, client, out, err, count, role, timeout, as_json):
    """
    C{idetcd wait}: return once C{count} members of C{role} are present,
    following etcd's watch; L{CommandError} after C{timeout} seconds.
    """
    what = f"{role} members" if role else "members"
    registry = Registry(client, view.prefix, reactor)
    registry.startService()
    enough = when_members(registry, count, role, view.zone)
    wanted = member_filter(role, view.zone)

    def waiting(_):
        if not enough.called:
            present = sum(1 for member in registry.members.values() if wanted(member))
            err.write(f"idetcd: waiting for {count} {what} in {view.zone} ({present} present)\n")
            err.flush()

    ready = registry.when_ready().addCallback(waiting)
    ready.addErrback(lambda failure: failure.trap(defer.CancelledError))
    if timeout is not None:
        enough.addTimeout(timeout, reactor)
    try:
        found = yield enough
    except defer.TimeoutError:
        if not registry.ready:
            raise view.unreachable(f"no answer from {', '.join(client.endpoints)} in {timeout:g}s") from None
        present = sum(1 for member in registry.members.values() if wanted(member))
        raise CommandError(
            EXIT_TIMEOUT,
            f"timed out after {timeout:g}s: {present} of {count} {what} present in {view.zone}",
        ) from None
    finally:
        ready.cancel()
        registry.stopService()
    if as_json:
        out.write(json.dumps({"zone": view.zone, "members": [member_json(m) for m in found]}, indent=2) + "\n")
    else:
        out.write("".join(member.name + "\n" for member in found))


@defer.inlineCallbacks
def env(reactor, view, client, out, form, slots):
    """
    C{idetcd env}: this node's cluster spec, once etcd confirms that the
    name its state directory records is held by this node.
    """
    name = view.state.last_name()
    if name is None:
        raise CommandError(
            EXIT_NO_SPEC,
            f"this node has not held a name: its state directory {view.state.path} records none"
            " (is its node started, with this --state?)",
        )
    found, _ = yield read_members(client, view.prefix, view.zone)
    member = found.get(name)
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
    try:
        text = ClusterSpec.of(found.values(), name).render(form, slots)
    except SpecError as e:
        raise CommandError(EXIT_NO_SPEC, str(e)) from None
    out.write(text)
