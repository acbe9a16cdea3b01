"""
The ``idetcd`` command: what a training job needs from its node's cluster.

    idetcd members [--json]
    idetcd wait N [--role ROLE] [--timeout S] [--json]
    idetcd wait --nnodes N[:M] [--job NAME] [--timeout S] [--json]
    idetcd env --format FORMAT [--slots K] [--addresses] [--nnodes N[:M] [--job NAME] [--timeout S]]
    idetcd round [--job NAME] [--json]
    idetcd check

Each reads the etcd and the state directory of the node that runs the
same Corefile (``--corefile``, ``--state``, ``--port`` as given to
``twistd idetcd``), except C{check}, which asks nothing of etcd: it checks
the Corefile as the node would (L{idetcd.cli._check}).  Errors are one line
on stderr and an exit status from L{idetcd.cli._commands} (C{check}: the
node's).
"""

import argparse
import re
import sys

from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)

from idetcd._version import __version__
from idetcd.cli import _commands as commands
from idetcd.cli._check import check
from idetcd.cli._commands import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    SETTLE,
    CommandError,
    NodeView,
    RoundRequest,
)
from idetcd.node import Unusable, dns_port
from idetcd.training import FORMATS
from idetcd.training.rounds import parse_nnodes


def _fail(status, message):
    sys.stderr.write(f"idetcd: {message}\n")
    sys.stderr.flush()
    raise SystemExit(status)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, and the exit status the README lists.
        _fail(EXIT_USAGE, f"{message} (see: {self.prog} --help)")


def _at_least(low, convert):
    def check(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not value >= low:
            raise argparse.ArgumentTypeError(f"expected a number of at least {low}, got {text!r}")
        return value

    return check


def _port(text):
    try:
        return dns_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _nnodes(text):
    try:
        return parse_nnodes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_JOB = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


def _job(text):
    if not _JOB.match(text):
        raise argparse.ArgumentTypeError(
            f"a job name is 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit; got {text!r}"
        )
    return text


def _round_options(parser):
    """
    The options that ask for an agreed round, on C{wait} and C{env}.
    """
    group = parser.add_argument_group(
        "agreed rounds",
        "With --nnodes, every node that asks gets the same round of the job, recorded in etcd: "
        "the same members in the same order.",
    )
    group.add_argument(
        "--nnodes", "-n", type=_nnodes, metavar="N[:M]",
        help="agree a round of N to M live members of this node's role (lowest slots first)",
    )
    group.add_argument("--job", type=_job, help="the job's name (default: this node's role)")
    group.add_argument(
        "--settle", type=_at_least(0, float), default=SETTLE,
        help="with N:M, how long to wait for more than N members (default: %(default)gs)",
    )
    group.add_argument(
        "--after", type=_at_least(0, int), default=0, metavar="ROUND",
        help="agree a round numbered above ROUND: a new round after the job failed in ROUND",
    )


def _round_request(args):
    if args.nnodes is None:
        for option in ("job", "after"):
            if getattr(args, option):
                _fail(EXIT_USAGE, f"--{option} goes with --nnodes (see: idetcd {args.command} --help)")
        return None
    low, high = args.nnodes
    return RoundRequest(low, high, args.job, args.settle, args.after, args.timeout)


def parser():
    """
    The command line: one subcommand, each with the node's options.
    """
    top = _Parser(
        prog="idetcd",
        description="Look at this node's idetcd cluster: its members, a barrier, its cluster spec.",
    )
    top.add_argument("--version", action="version", version=f"idetcd {__version__}")
    node = argparse.ArgumentParser(add_help=False)
    node.add_argument("--corefile", "-c", default="Corefile", help="the node's Corefile (default: %(default)s)")
    node.add_argument("--state", "-s", help="the node's state directory, if given to twistd idetcd")
    node.add_argument(
        "--port", "-p", type=_port,
        help="the node's DNS port, if given to twistd idetcd (it names the default state directory)",
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    members = sub.add_parser(
        "members", parents=[node], help="list every member of the zone",
        description="Every member of the node's zone: name, role, slot, addresses, srv port, "
        "node identity, and the seconds left on its lease.",
    )
    members.add_argument("--json", "-j", action="store_true", help="print JSON")

    wait = sub.add_parser(
        "wait", parents=[node], help="wait until N members (of a role) are present",
        description="Wait until at least N members (of ROLE) are present, then print them, "
        "lowest slot first. Follows etcd's watch. Exits 5 after --timeout seconds.",
    )
    wait.add_argument("count", metavar="N", nargs="?", type=_at_least(1, int), help="how many members")
    wait.add_argument("--role", "-r", help="count only members of this role (worker for worker{{.ID}}...)")
    wait.add_argument(
        "--timeout", "-t", type=_at_least(0.001, float), help="give up after this many seconds (default: never)"
    )
    wait.add_argument("--json", "-j", action="store_true", help="print JSON")
    _round_options(wait)

    env = sub.add_parser(
        "env", parents=[node], help="print this node's cluster spec for a framework",
        description="This node's cluster spec: tf-config (TF_CONFIG JSON), torchrun (NODE_RANK, "
        "NNODES, MASTER_ADDR, MASTER_PORT, LOCAL_ADDR, GLOO_SOCKET_IFNAME, one NAME=VALUE a line), "
        "hostfile (Open MPI/DeepSpeed: 'name slots=K' per member of this node's role), "
        "hostfile-mpich (MPICH/Hydra: 'name:K') or json. Without --nnodes, a snapshot of the "
        "members present now, which another node may see differently; with it, the job's agreed "
        "round (exit status 6 for a node not in it).",
    )
    env.add_argument("--format", "-f", required=True, choices=FORMATS)
    env.add_argument("--slots", type=_at_least(1, int), default=1, help="hostfile: processes per node (default: 1)")
    env.add_argument(
        "--addresses", action="store_true", help="hostfile: each member's address instead of its name"
    )
    env.add_argument(
        "--timeout", "-t", type=_at_least(0.001, float), help="with --nnodes: give up after this many seconds"
    )
    _round_options(env)

    round_ = sub.add_parser(
        "round", parents=[node], help="show the job's current round",
        description="The job's round as etcd holds it now, without waiting or agreeing a new one: "
        "its number and members by rank, whether all of them are alive, and the live members "
        "of the role not in it.",
    )
    round_.add_argument("--job", type=_job, help="the job's name (default: this node's role)")
    round_.add_argument("--json", "-j", action="store_true", help="print JSON")

    sub.add_parser(
        "check", parents=[node], help="check the Corefile as the node would, without starting it",
        description="Read the Corefile and build its nodes as twistd idetcd does, with the same "
        "--port and --state, without binding a port or asking etcd: every directive, the files "
        "that tls, credentials and forward name, forward's upstreams. Prints a line for each node, "
        "or the node's one-line error with its exit status (78 for the Corefile, 64 for options).",
    )
    return top


def _command(args):
    """
    The command function and its arguments after (reactor, view, client).
    """
    if args.command == "members":
        return commands.members, (sys.stdout, args.json)
    if args.command == "round":
        return commands.round_, (sys.stdout, args.job, args.json)
    request = _round_request(args)
    if args.command == "wait":
        if (args.count is None) == (request is None):
            _fail(EXIT_USAGE, "wait takes N or --nnodes N[:M], not both (see: idetcd wait --help)")
        if request is not None and args.role:
            _fail(EXIT_USAGE, "--role goes with N: a round is of this node's role (see: idetcd wait --help)")
        return commands.wait, (
            sys.stdout, sys.stderr, args.count, args.role, args.timeout, args.json, request,
        )
    if args.timeout is not None and request is None:
        _fail(EXIT_USAGE, "--timeout goes with --nnodes (see: idetcd env --help)")
    return commands.env, (sys.stdout, sys.stderr, args.format, args.slots, args.addresses, request)


def _warnings_to_stderr(said):
    """
    Print each warning once: a registry that cannot reach etcd says so
    again at every retry, with only a new delay.
    """

    def observe(event):
        fields = sorted(
            (key, repr(value)) for key, value in event.items() if not key.startswith("log_") and key != "delay"
        )
        seen = (event.get("log_format"), tuple(fields))
        if seen not in said:
            said.add(seen)
            _print_event(event)

    return observe


def _print_event(event):
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += f": {failure.getErrorMessage()}"
    sys.stderr.write(f"idetcd: {text}\n")


@defer.inlineCallbacks
def _main(reactor, args, view, interrupted):
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(_warnings_to_stderr(set()), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )
    done = []
    # A signal stops the reactor before the command is done: react() would
    # then exit 0, as if a wait had been met.
    reactor.addSystemEventTrigger("before", "shutdown", lambda: done or interrupted.append(True))
    command, command_args = _command(args)
    try:
        yield commands.run_command(reactor, view, command, *command_args)
    except CommandError as e:
        _fail(e.status, e.message)
    except Exception as e:
        _fail(EXIT_ERROR, f"internal error (please report it): {e.__class__.__name__}: {e}")
    finally:
        done.append(True)
        sys.stdout.flush()


def run(argv=None):
    """
    The console script: parse C{argv} (default C{sys.argv[1:]}), run the
    command, exit with its status.
    """
    args = parser().parse_args(argv)
    if args.command == "check":
        try:
            check(args.corefile, args.port, args.state, sys.stdout)
        except Unusable as e:
            _fail(e.status, e.line)
        return
    try:
        view = NodeView.load(args.corefile, args.state, args.port)
    except CommandError as e:
        _fail(e.status, e.message)
    interrupted = []
    try:
        task.react(_main, [args, view, interrupted])
    except SystemExit:
        if interrupted:
            _fail(EXIT_INTERRUPTED, "interrupted")
        raise

