"""
systemd's readiness protocol: a real node process tells a test's
C{NOTIFY_SOCKET} it is ready once it holds its name, and that it stops on
SIGTERM; the notifier itself on a fake clock, with an abstract socket.
"""

import os
import shutil
import signal
import socket
import tempfile
import uuid

import dns.rcode
from twisted.internet import defer, protocol, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from idetcd.node._systemd import SystemdNotifier, from_environment, socket_address
from tests.dnsclient import query
from tests.nodes import NodeProcessCase
from tests.waiting import sleep


class _Messages(protocol.DatagramProtocol):
    def __init__(self):
        self.received = []

    def datagramReceived(self, data, address):
        self.received.append(data.decode("utf-8"))

    def without_watchdog(self):
        return [message for message in self.received if message != "WATCHDOG=1"]


class NotifyProcessTests(NodeProcessCase):
    """
    C{twistd idetcd} under a test standing in for systemd: a Unix datagram
    socket named by C{$NOTIFY_SOCKET}.
    """

    def notify_socket(self):
        # A short path: Unix socket paths are limited to 107 bytes.
        directory = tempfile.mkdtemp(prefix="idetcd-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "notify")
        messages = _Messages()
        port = reactor.listenUNIXDatagram(path, messages)
        self.addCleanup(port.stopListening)
        return path, messages

    @defer.inlineCallbacks
    def wait_for_message(self, node, messages, predicate, timeout=30, allow_exit=False):
        for _ in range(int(timeout / 0.05)):
            found = [message for message in messages.received if predicate(message)]
            if found:
                return found
            if node.ended.called and not allow_exit:
                self.fail(f"node exited with {node.status}:\n{node.output.decode()}")
            yield sleep(0.05)
        self.fail(f"no such message in {timeout}s: {messages.received}\n{node.output.decode()}")

    @defer.inlineCallbacks
    def test_ready_once_named_and_stopping_on_sigterm(self):
        path, messages = self.notify_socket()
        node = self.start_node(NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
        yield self.wait_for_message(node, messages, lambda m: m.startswith("READY=1"))
        ready = messages.without_watchdog()[-1]
        name = ready.split("STATUS=")[1].split()[0]
        self.assertEqual(ready, f"READY=1\nSTATUS={name} answers DNS on port {node.port}")
        # Ready means answering DNS for its own name.
        reply = yield query(node.port, name)
        self.assertEqual(reply.rcode(), dns.rcode.NOERROR)
        self.assertEqual([rr.address for rr in reply.answer[0]], ["127.0.0.1"])
        # The watchdog is fed every half second.
        yield self.wait_for_message(node, messages, lambda m: m == "WATCHDOG=1" and messages.received.count(m) >= 3)

        node.process.signalProcess(signal.SIGTERM)
        yield node.ended
        self.assertEqual((node.status, node.signal), (None, signal.SIGTERM))
        self.assertIn(f"released {name}".encode(), node.output)
        self.assertEqual(messages.without_watchdog(), ["STATUS=claiming a name", ready, "STOPPING=1"])

    @defer.inlineCallbacks
    def test_failed_start_says_why(self):
        """
        A node that cannot start (its DNS port is taken) tells systemd why,
        for C{systemctl status}, and is never ready.
        """
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        path, messages = self.notify_socket()
        node = self.start_node(NOTIFY_SOCKET=path, NODE_PORT=str(port))
        yield node.ended
        yield self.wait_for_message(node, messages, lambda m: m == "STOPPING=1", allow_exit=True)
        self.assertEqual(
            messages.received,
            [f"STATUS=cannot start: cannot listen for DNS on 127.0.0.1:{port}: another process listens there;"
             " stop it, or give this node another port or address in the Corefile",
             "STOPPING=1"],
        )

    @defer.inlineCallbacks
    def test_embedded_etcd_does_not_report(self):
        """
        etcd speaks the protocol too, and would say READY=1 before the node
        has a name: the node keeps C{$NOTIFY_SOCKET} from it.
        """
        with open(self.corefile) as f:
            text = f.read()
        with open(self.corefile, "w") as f:
            f.write(text.replace("endpoint {$ETCD_URL}", "endpoint embedded"))
        path, messages = self.notify_socket()
        node = self.start_node(NOTIFY_SOCKET=path)
        yield self.wait_claimed(node)
        yield self.wait_for_message(node, messages, lambda m: m.startswith("READY=1"))
        node.process.signalProcess(signal.SIGTERM)
        yield node.ended
        self.assertEqual(
            [message.split("\n")[0] for message in messages.received], ["STATUS=claiming a name", "READY=1", "STOPPING=1"]
        )


class NotifierTests(unittest.TestCase):
    """
    L{SystemdNotifier} on a fake clock, sending to real sockets.
    """

    def abstract_socket(self):
        """
        A socket in the abstract namespace and its C{$NOTIFY_SOCKET} name.
        """
        name = f"idetcd-test-{uuid.uuid4().hex}"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind("\0" + name)
        receiver.setblocking(False)
        return receiver, "@" + name

    def received(self, receiver):
        messages = []
        for _ in range(100):
            try:
                messages.append(receiver.recv(4096).decode("utf-8"))
            except BlockingIOError:
                return messages
        self.fail("more than 100 messages")

    def test_abstract_namespace(self):
        self.assertEqual(socket_address("@idetcd/notify"), "\0idetcd/notify")
        self.assertEqual(socket_address("/run/systemd/notify"), "/run/systemd/notify")

    def test_ready_watchdog_and_stopping(self):
        receiver, address = self.abstract_socket()
        clock = task.Clock()
        ready = defer.Deferred()
        notifier = SystemdNotifier(address, lambda: ready, clock, watchdog=10)
        notifier.startService()
        self.assertEqual(self.received(receiver), ["STATUS=claiming a name", "WATCHDOG=1"])
        ready.callback("worker1.tf.local. answers DNS on port 53")
        clock.advance(5)
        clock.advance(5)
        self.assertEqual(
            self.received(receiver),
            ["READY=1\nSTATUS=worker1.tf.local. answers DNS on port 53", "WATCHDOG=1", "WATCHDOG=1"],
        )
        notifier.stopService()
        self.assertEqual(self.received(receiver), ["STOPPING=1"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stopped_before_ready(self):
        receiver, address = self.abstract_socket()
        cancelled = []
        waiting = defer.Deferred(cancelled.append)
        notifier = SystemdNotifier(address, lambda: waiting, task.Clock())
        notifier.startService()
        notifier.stopService()
        self.assertEqual(cancelled, [waiting])
        self.assertEqual(self.received(receiver), ["STATUS=claiming a name", "STOPPING=1"])

    def test_nobody_listening(self):
        """
        A socket that is gone costs a warning, at most one per interval,
        and never an exception.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        notifier = SystemdNotifier(f"@idetcd-test-{uuid.uuid4().hex}", defer.Deferred, task.Clock())
        notifier.startService()
        notifier.notify(STATUS="one")
        notifier.stopService()
        warnings = [e for e in events if e.get("log_namespace") == "idetcd.node._systemd"]
        self.assertEqual(len(warnings), 1)
        self.assertIn("Connection refused", str(warnings[0]["error"]))


class EnvironmentTests(unittest.TestCase):
    def test_taken_out_of_the_environment(self):
        environ = {
            "NOTIFY_SOCKET": "@notify",
            "WATCHDOG_USEC": "30000000",
            "WATCHDOG_PID": str(os.getpid()),
            "HOME": "/root",
        }
        self.assertEqual(from_environment(environ), ("@notify", 30.0))
        self.assertEqual(environ, {"HOME": "/root"})

    def test_watchdog_of_another_process(self):
        environ = {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
        self.assertEqual(from_environment(environ), ("/run/notify", None))
        self.assertEqual(environ, {})

    def test_not_under_systemd(self):
        self.assertEqual(from_environment({}), (None, None))
