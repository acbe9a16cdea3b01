"""
The ``twistd idetcd`` command: options, the service it runs, and how it
fails: one line that says what is wrong and what to do, and the exit status
of L{idetcd.node._failures}.
"""

import atexit
import os
import sys

import attr
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from idetcd._version import __version__
from idetcd.common import EXIT_SOFTWARE, EXIT_USAGE
from idetcd.node import _failures as failures
from idetcd.node import _logs as logs
from idetcd.node._configured import Unusable, build_nodes, dns_port, idetcd_blocks
from idetcd.node._http import HttpEndpoint
from idetcd.node._reload import Reloader
from idetcd.node._systemd import SystemdNotifier, from_environment

log = Logger()


def _leave(message, status):
    """
    Fail before twistd logs or binds anything: one line on stderr.
    """
    prefix = logs.priority_prefix(LogLevel.error) if logs.is_journal(sys.stderr) else ""
    print(f"{prefix}twistd idetcd: {failures.one_line(message)}", file=sys.stderr)
    raise SystemExit(status)


class Options(usage.Options):
    synopsis = "[--corefile FILE] [--port PORT] [--state DIR] [--log-format text|json]"
    longdesc = (
        "Claim a unique name for this node in etcd and answer DNS for every "
        "node's name. See the README for the Corefile directives and the "
        "exit statuses."
    )
    optParameters = [
        ["corefile", "c", "Corefile", "The Corefile to read."],
        ["port", "p", None, "DNS port to listen on, instead of the Corefile's.", dns_port],
        ["state", "s", None, "State directory, instead of the Corefile's 'state'."],
        ["log-format", None, "text", "How the log on standard output is written: text or json "
         "(one JSON object per line)."],
        ["log-priority", None, "auto", "Start each line of the log on standard output with its "
         "syslog priority (<3>), as journald reads it: yes, no, or auto (when standard output "
         "is the journal, as $JOURNAL_STREAM says)."],
    ]

    def parseOptions(self, options=None):
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            _leave(f"{e} (see twistd idetcd --help)", EXIT_USAGE)

    def opt_version(self):
        """
        Display idetcd's version and exit.
        """
        # usage.Options' own prints Twisted's.
        print(f"idetcd {__version__}")
        raise SystemExit(0)

    def postOptions(self):
        try:
            self["blocks"] = idetcd_blocks(self["corefile"], self["port"], self["state"])
        except Unusable as e:
            if e.status == EXIT_USAGE:
                raise usage.UsageError(e.line) from None
            _leave(e.line, e.status)
        self["log_observer"] = self._log_observer()

    def _log_observer(self):
        """
        The observer that writes twistd's log on standard output, or
        C{None} when twistd logs elsewhere (C{--logfile}, C{--syslog},
        C{--logger}, a daemon).
        """
        for name, choices in (("log-format", logs.FORMATS), ("log-priority", logs.PRIORITY_CHOICES)):
            if self[name] not in choices:
                _leave(
                    f"--{name} must be one of {', '.join(choices)}, got {self[name]!r}"
                    " (see twistd idetcd --help)", EXIT_USAGE,
                )
        twistd = getattr(self, "parent", None)
        if twistd is not None and not logs.twistd_logs_to_stdout(twistd):
            if self["log-format"] != "text":
                _leave(
                    f"--log-format {self['log-format']} writes to standard output: use it with"
                    " --nodaemon and without --logfile, --syslog or --logger", EXIT_USAGE,
                )
            return None
        return logs.stdout_observer(sys.stdout, self["log-format"], self["log-priority"])


def _exit_after_shutdown(status):
    # twistd exits 0 whenever the reactor stops; leave with our status once
    # it has cleaned up after itself.
    def leave():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    atexit.register(leave)


def _ready_status(nodes):
    """
    What C{STATUS=} says once every node holds its name.
    """
    return "; ".join(f"{node.held_name} answers DNS on port {node.dns.port}" for node in nodes)


@attr.s(eq=False)
class Nodes(MultiService):
    """
    The nodes of one Corefile, failing together: when one cannot start, the
    reason is logged as one line, every node stops and the process exits
    with the status L{failures.explain} gives (70 for an unexpected error,
    logged with its traceback).  Under systemd (C{notify}: the address and
    watchdog period of L{from_environment}), a L{SystemdNotifier} child
    reports readiness once every node holds its name.  With the
    C{corefile} they come from, a L{Reloader} handles SIGHUP, SIGUSR1 and
    SIGUSR2 from start until every node has stopped.
    """

    nodes = attr.ib()
    reactor = attr.ib()
    notify = attr.ib(default=(None, None))
    corefile = attr.ib(default=None)
    #: What twistd logs through instead of its own observer, or None.
    log_observer = attr.ib(default=None)
    status = attr.ib(default=None, init=False)
    notifier = attr.ib(default=None, init=False)
    reloader = attr.ib(default=None, init=False)

    def __attrs_post_init__(self):
        MultiService.__init__(self)
        for node in self.nodes:
            node.setServiceParent(self)
        if self.corefile is not None:
            self.reloader = Reloader(self.corefile, self.nodes, self.reactor)
        address, watchdog = self.notify
        if address:
            # Added last: started last, stopped first (STOPPING=1 before the
            # names are given back).
            self.notifier = SystemdNotifier(address, self._all_named, self.reactor, watchdog)
            self.notifier.setServiceParent(self)

    def setServiceParent(self, parent):
        # twistd's application, whose observer twistd uses in place of the
        # one it would make for standard output.
        if isinstance(parent, Componentized) and self.log_observer is not None and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, self.log_observer)
        MultiService.setServiceParent(self, parent)

    def _all_named(self):
        named = defer.gatherResults([node.when_claimed() for node in self.nodes], consumeErrors=True)
        return named.addCallback(lambda _: _ready_status(self.nodes))

    def privilegedStartService(self):
        # twistd binds the ports here, before dropping privileges.
        try:
            MultiService.privilegedStartService(self)
        except Exception:
            self.fail(Failure())

    def startService(self):
        # Wait for the names before starting: a node that fails at once then
        # leaves the telling to fail(), rather than logging it itself.
        for node in self.nodes:
            node.when_claimed().addErrback(self.fail)
        if self.status is not None:
            # A port could not be bound: nothing starts, and the stop that
            # follows closes what was bound.
            Service.startService(self)
            return
        if self.reloader is not None:
            self.reloader.start()
        try:
            MultiService.startService(self)
        except Exception:
            self.fail(Failure())

    def stopService(self):
        if self.reloader is None:
            return MultiService.stopService(self)
        self.reloader.stop()

        def restore(result):
            # Only now: a signal while the names are given back must not
            # kill the process.
            self.reloader.restore()
            return result

        return MultiService.stopService(self).addBoth(restore)

    def _listeners(self):
        """
        What listens on which port, to name it in a failure.
        """
        listeners = {}
        for node in self.nodes:
            listeners[node.dns.port] = "DNS"
            for child in node:
                if isinstance(child, HttpEndpoint):
                    listeners[child.address.port] = f"the {child.name} endpoint"
        return listeners

    def fail(self, failure):
        """
        A node cannot start: say why once, stop, and exit with the status
        that says whether starting again can help.
        """
        if failure.check(defer.CancelledError) or self.status is not None:
            return None  # stopped before it had a name, or failing already
        explained = failures.explain(
            failure.value, self._listeners(), tuple(node.state.path for node in self.nodes)
        )
        if explained is None:
            log.failure("cannot start: unexpected error", failure)
            line, self.status = failures.one_line(failure.getErrorMessage()), EXIT_SOFTWARE
        else:
            line, self.status = explained
            log.critical("cannot start: {why}", why=line, exit_status=self.status)
        if self.notifier is not None:
            self.notifier.notify(STATUS=f"cannot start: {line}")
        _exit_after_shutdown(self.status)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)
        return None


def makeService(options, reactor=global_reactor):
    try:
        nodes = build_nodes(options["blocks"], reactor, options["port"], options["state"])
    except Unusable as e:
        _leave(e.line, e.status)
    return Nodes(nodes, reactor, from_environment(), options["corefile"], options.get("log_observer"))
