"""
The peer proxy finds the head of every request on a connection, however the
bytes are split, whatever the bodies hold.
"""

from twisted.trial import unittest

from tests.peerproxy import RequestHeads

PROBE = b"GET /raft/probing HTTP/1.1\r\nHost: a\r\nUser-Agent: Go-http-client/1.1\r\n\r\n"
BODY = b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"  # a body that looks like a head
PIPELINE = (
    b"POST /raft HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\nX-Server-From: 8a3f\r\n\r\n" % len(BODY)
) + BODY
SNAPSHOT = (
    b"POST /raft/snapshot HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Server-From: 77\r\n\r\n"
    b"a;ext=1\r\n" b"POST / HTT" b"\r\n"  # chunks that look like heads
    b"4\r\n" b"\r\n\r\n" b"\r\n"
    b"0\r\nTrailer: x\r\n\r\n"
)


class RequestHeadsTests(unittest.TestCase):
    def senders(self, payload, step):
        heads = RequestHeads()
        found = []
        for i in range(0, len(payload), step):
            found.extend(head.get("x-server-from") for head in heads.feed(payload[i : i + step]))
        return found

    def test_every_head_in_any_split(self):
        payload = PROBE + PIPELINE + SNAPSHOT + PIPELINE
        for step in (1, 2, 7, 64, len(payload)):
            self.assertEqual(self.senders(payload, step), [None, "8a3f", "77", "8a3f"], step)

    def test_endless_head_is_refused(self):
        heads = RequestHeads()
        heads.feed(b"GET / HTTP/1.1\r\n")
        with self.assertRaises(ValueError):
            heads.feed(b"X" * (RequestHeads.max_head + 1))
