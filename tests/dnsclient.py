"""
Asking DNS servers on loopback in tests: dnspython queries from a thread,
raw datagrams and pipelined TCP sessions from blocking sockets (run them in
a thread), the header and question bytes to send, the reply idetcd's
encoder writes, and dig or kdig run as child processes.
"""

import os
import shutil
import socket
import struct
import time

import dns.message
import dns.query
from twisted.internet import defer, threads, utils
from twisted.names import dns as tdns
from twisted.trial import unittest

from idetcd.dns import _wire as wire

HOST = "127.0.0.1"
TIMEOUT = 3.0


def exchange_udp(port, payload, wait=TIMEOUT, host=HOST):
    """
    Send one datagram; the reply, or None if none came within C{wait}.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        s.sendto(payload, (host, port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def read_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_message(sock):
    (length,) = struct.unpack("!H", read_exactly(sock, 2))
    return read_exactly(sock, length)


def tcp_session(port, payloads):
    """
    Send every payload on one TCP connection at once (pipelined); the
    replies in the order they came.
    """
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as s:
        s.sendall(b"".join(struct.pack("!H", len(p)) + p for p in payloads))
        return [read_message(s) for _ in payloads]


def wait_closed(sock, wait):
    """
    Seconds until the peer closes C{sock}; None if it stays open C{wait}.
    """
    sock.settimeout(wait)
    start = time.monotonic()
    try:
        data = sock.recv(1)
    except socket.timeout:
        return None
    except ConnectionResetError:
        data = b""
    return time.monotonic() - start if data == b"" else None


def header(id=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!6H", id, flags, qd, an, ns, ar)


def question(name=b"\x07worker1\x02tf\x05local\x00", type=1, cls=1):
    return name + struct.pack("!HH", type, cls)


@defer.inlineCallbacks
def run_tool(case, port, tool, *args):
    """
    The output of C{tool} (dig, kdig) asking the server on C{port}, once
    it exited cleanly; C{case} is skipped where the tool is not installed.
    """
    path = shutil.which(tool)
    if path is None:
        raise unittest.SkipTest(f"{tool} is not installed")
    out, err, code = yield utils.getProcessOutputAndValue(
        path, ("@" + HOST, "-p", str(port)) + args + ("+time=2",), env=os.environ
    )
    case.assertEqual(code, 0, (out + err).decode())
    return out.decode()


def query(port, name, rdtype="A", tcp=False):
    """
    Ask the node on C{port}, from a thread: dnspython blocks.
    """
    message = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return threads.deferToThread(send, message, "127.0.0.1", timeout=2, port=port)


def reply(labels, type, response, limit=wire.MAX_MESSAGE):
    """
    A whole reply message (id 0, RD) to (C{labels}, C{type}) and its encoding.
    """
    question = wire.name(labels) + wire.TYPE_CLASS.pack(type, tdns.IN)
    encoded = wire.encode(labels, question, response)
    head, tail = wire.template(encoded, wire.RD, len(question), limit, None)
    return b"\0\0" + head + question + tail, encoded
