"""
Traffic at a node in tests: a well-behaved client asking over and over
(L{probe}, run in a thread).
"""

import time

import dns.exception
import dns.message
import dns.query

from tests.dnsclient import HOST


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
