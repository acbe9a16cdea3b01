"""
Signals to a real ``twistd idetcd`` process against a real etcd: SIGHUP
reloads the Corefile, SIGUSR1 and SIGUSR2 log the node's state, and none of
them kills the node or costs it its name.
"""

import signal

import dns.rcode
from twisted.internet import defer

from tests.dnsclient import query
from tests.nodes import SignalCase
from tests.upstreams import closed_port, start_authority


class ReloadTests(SignalCase):
    @defer.inlineCallbacks
    def test_sighup_applies_a_new_ttl_and_keeps_the_name(self):
        node = yield self.start_holder()
        lease = yield self.holder_lease()
        self.assertEqual((yield self.answer_ttl(node)), 5)
        self.rewrite("ttl 5", "ttl 30")
        node.process.signalProcess(signal.SIGHUP)
        yield self.wait_output(node, rb"SIGHUP: reloaded \S+: applied ttl\n")
        yield self.assert_still_holding(node, lease, 30)

        # It still gives its name back when stopped.
        node.process.signalProcess(signal.SIGTERM)
        yield node.ended
        self.assertEqual((node.status, node.signal), (None, signal.SIGTERM))
        self.assertIn(b"released worker1.tf.local.", node.output)

    @defer.inlineCallbacks
    def test_sighup_with_a_change_that_needs_a_restart(self):
        """
        A new pattern (with a new ttl beside it) is refused whole, in one
        line naming the pattern; the node runs on with its name and ttl.
        """
        node = yield self.start_holder()
        lease = yield self.holder_lease()
        self.rewrite("ttl 5", "ttl 30")
        self.rewrite("pattern worker{{.ID}}", "pattern node{{.ID}}")
        node.process.signalProcess(signal.SIGHUP)
        found = yield self.wait_output(node, rb"SIGHUP: cannot reload: [^\n]*\n")
        self.assertRegex(
            found.group(0),
            rb"SIGHUP: cannot reload: \S+: pattern changed, which needs a restart; running on as before\n",
        )
        self.assertEqual(node.output.count(b"cannot reload"), 1)
        yield self.assert_still_holding(node, lease, 5)

    @defer.inlineCallbacks
    def test_sighup_with_a_broken_corefile(self):
        node = yield self.start_holder()
        lease = yield self.holder_lease()
        self.rewrite("ttl 5", "ttl forever")
        node.process.signalProcess(signal.SIGHUP)
        found = yield self.wait_output(node, rb"SIGHUP: cannot reload: [^\n]*\n")
        self.assertEqual(
            found.group(0),
            f"SIGHUP: cannot reload: {self.corefile}:10: ttl must be a whole number of seconds from 0 to 86400,"
            " got 'forever'; running on as before\n".encode(),
        )
        yield self.assert_still_holding(node, lease, 5)

    @defer.inlineCallbacks
    def test_sighup_moves_forward_to_another_upstream(self):
        _, upstream = start_authority(self)
        closed = closed_port()
        self.rewrite("    bind 127.0.0.1\n", f"    bind 127.0.0.1\n    forward . 127.0.0.1:{closed}\n")
        node = yield self.start_holder()
        lease = yield self.holder_lease()
        reply = yield query(node.port, "example.com")
        self.assertEqual(reply.rcode(), dns.rcode.SERVFAIL)
        self.rewrite(f"127.0.0.1:{closed}", f"127.0.0.1:{upstream}")
        node.process.signalProcess(signal.SIGHUP)
        yield self.wait_output(node, rb"SIGHUP: reloaded \S+: applied forward\n")
        reply = yield query(node.port, "example.com")
        self.assertEqual([rr.address for rr in reply.answer[0]], ["192.0.2.10"])
        yield self.assert_still_holding(node, lease, 5)

    @defer.inlineCallbacks
    def test_reload_directive_follows_the_checksum(self):
        """
        With C{reload 2s 1s}, a changed Corefile is applied within a few
        seconds, with no signal.
        """
        self.rewrite("    bind 127.0.0.1\n", "    bind 127.0.0.1\n    reload 2s 1s\n")
        node = yield self.start_holder()
        lease = yield self.holder_lease()
        self.rewrite("ttl 5", "ttl 7")
        yield self.wait_output(node, rb"reload: reloaded \S+: applied ttl\n")
        yield self.assert_still_holding(node, lease, 7)


class StateDumpTests(SignalCase):
    @defer.inlineCallbacks
    def test_sigusr1_and_sigusr2_log_the_state(self):
        node = yield self.start_holder()
        lease = yield self.holder_lease()
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            node.process.signalProcess(sig)
            found = yield self.wait_output(
                node,
                rb"%s: tf\.local\. on DNS port %d: holds worker1\.tf\.local\. \(slot 1\) on lease ([0-9a-f]+),"
                rb" [0-9.]+s left unless renewed; 1 members at registry revision \d+; etcd at \S+; ttl 5, lease 3s\n"
                % (signal.Signals(sig).name.encode(), node.port),
            )
            self.assertEqual(int(found.group(1), 16), lease)
            yield self.assert_still_holding(node, lease, 5)
