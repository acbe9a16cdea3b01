"""
systemd's service notifications (C{Type=notify}), with no library: each
message is one datagram of C{KEY=VALUE} lines sent to the Unix socket that
C{$NOTIFY_SOCKET} names; a leading C{@} names a socket in Linux's abstract
namespace.
"""

import os
import socket

import attr
from twisted.application.service import Service
from twisted.internet import task
from twisted.logger import Logger, LogLevel

from idetcd.common import RateLimitedLog

log = Logger()


def socket_address(name):
    """
    The address to send to for C{$NOTIFY_SOCKET} C{name}: a path, or for
    C{@name} the abstract socket C{\\0name}.
    """
    return "\0" + name[1:] if name.startswith("@") else name


def from_environment(environ=os.environ):
    """
    The notification socket and watchdog period (seconds) systemd gave this
    process, each C{None} when not given.  Both are taken out of C{environ}
    so that child processes do not report as this service (etcd, run by
    C{endpoint embedded}, would send its own C{READY=1}); a watchdog meant
    for another process (C{$WATCHDOG_PID}) is not this one's.
    """
    address = environ.pop("NOTIFY_SOCKET", None) or None
    usec = environ.pop("WATCHDOG_USEC", "")
    pid = environ.pop("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or pid not in ("", str(os.getpid())):
        return address, None
    return address, int(usec) / 1e6


@attr.s(eq=False)
class SystemdNotifier(Service):
    """
    Tells systemd, through C{address} (C{$NOTIFY_SOCKET}), what the node
    is doing: C{READY=1} once C{ready()} (a Deferred) fires, with the
    C{STATUS=} line it fires with, and C{STOPPING=1} when stopped.  With a
    C{watchdog} period (seconds) it sends C{WATCHDOG=1} every half period,
    for as long as the reactor turns.
    """

    name = "systemd"

    address = attr.ib()
    ready = attr.ib()
    reactor = attr.ib()
    watchdog = attr.ib(default=None)
    _socket = attr.ib(default=None, init=False)
    _waiting = attr.ib(default=None, init=False)
    _pings = attr.ib(default=None, init=False)
    _warn = attr.ib(init=False)

    def __attrs_post_init__(self):
        self._warn = RateLimitedLog(self.reactor, log, level=LogLevel.warn)

    def startService(self):
        Service.startService(self)
        self.notify(STATUS="claiming a name")
        if self.watchdog:
            self._pings = task.LoopingCall(self.notify, WATCHDOG="1")
            self._pings.clock = self.reactor
            self._pings.start(self.watchdog / 2)
        self._waiting = self.ready()
        self._waiting.addCallbacks(self._ready, self._not_ready)

    def _ready(self, status):
        self._waiting = None
        self.notify(READY="1", STATUS=status)

    def _not_ready(self, failure):
        # Stopped before it was ready, or failed: whoever started the node
        # says why (and may set STATUS= to say so).
        self._waiting = None

    def notify(self, **fields):
        """
        Send one message, C{KEY=VALUE} per field, in order, whether or not
        the service runs (a failed start still says why).  Never blocks: a
        message systemd cannot take now is dropped, and logged.
        """
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._socket.sendto(message.encode("utf-8"), socket_address(self.address))
        except OSError as e:
            self._warn("send", "cannot notify systemd at {address}: {error}", address=self.address, error=e)

    def stopService(self):
        Service.stopService(self)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()
        if self._pings is not None and self._pings.running:
            self._pings.stop()
        self.notify(STOPPING="1")
        self._socket.close()
        self._socket = None
