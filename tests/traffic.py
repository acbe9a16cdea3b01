"""
Traffic at a node in tests: a well-behaved client asking over and over
(L{probe}, run in a thread), and the hostile load of tests/flood.py run
against a test's node meanwhile (L{NodeTraffic}).
"""

import json
import os
import sys
import threading
import time

import dns.exception
import dns.message
import dns.query
from twisted.internet import threads, utils

from tests.dnsclient import HOST
from tests.nodes import ROOT


def probe(port, stop, outcomes, address="10.0.0.1"):
    """
    A well-behaved client asking over and over until C{stop} is set; an
    (answered right, seconds taken) pair for each query in C{outcomes}.
    """
    query = dns.message.make_query("worker1.tf.local", "A")
    while not stop.is_set():
        start = time.monotonic()
        try:
            response = dns.query.udp(query, HOST, port=port, timeout=1.0)
        except dns.exception.Timeout:
            outcomes.append((False, time.monotonic() - start))
        else:
            answered = [r.address for r in response.answer[0]] == [address]
            outcomes.append((answered, time.monotonic() - start))
        stop.wait(0.01)


class NodeTraffic:
    """
    A test's traffic at its node, C{self.node}: the hostile load of
    tests/flood.py in a process of its own, and L{probe} asking meanwhile.
    """

    def flood(self, *args):
        """
        Run tests/flood.py against the node; its counts.
        """
        d = utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "tests.flood", "--port", str(self.node.dns.port), *map(str, args)],
            env=os.environ,
            path=ROOT,
        )

        def counts(result):
            out, err, code = result
            self.assertEqual(code, 0, err.decode())
            return json.loads(out)

        return d.addCallback(counts)

    def probing(self):
        """
        Start a well-behaved client; a function that stops it and fires
        with its (answered, seconds) outcomes.
        """
        stop = threading.Event()
        outcomes = []
        d = threads.deferToThread(probe, self.node.dns.port, stop, outcomes, "127.0.0.1")

        def done():
            stop.set()
            return d.addCallback(lambda _: outcomes)

        return done
