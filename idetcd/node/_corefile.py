"""
A node's Corefile, read: its server blocks, each directive read by the
part it configures (CoreDNS's plugin style: L{idetcd.config} gives the
words and blocks, the part checks its settings), the node's own
directives (C{bind}, C{health}, C{ready}, C{prometheus}, C{reload}), and
the checks across directives and blocks.
"""

import ipaddress
import os

import attr

from idetcd.config import (
    DEFAULT_PORT,
    CorefileError,
    duration,
    ip_addresses,
    read,
    server_blocks,
)
from idetcd.dns import (
    CacheSettings,
    ErrorsSettings,
    ForwardSettings,
    TransferSettings,
    read_cache,
    read_errors,
    read_forward,
    read_log,
    read_transfer,
    transfer_for_zone,
)
from idetcd.node._idetcd_block import IdetcdSettings, read_idetcd


@attr.s(frozen=True, auto_attribs=True)
class HttpAddress:
    """
    Where an HTTP endpoint such as C{health} listens: C{host} is an IP
    address, or C{""} for every IPv4 address (as for C{bind}).
    """

    host: str
    port: int

    @property
    def interface(self):
        return self.host or "0.0.0.0"

    def clashes(self, other):
        """
        Whether both cannot listen at once (port 0 picks a free port).
        """
        if self.port != other.port or self.port == 0:
            return False
        return self.interface == other.interface or "0.0.0.0" in (
            self.interface,
            other.interface,
        ) and ":" not in self.interface + other.interface

    def __str__(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: Server block directives that start an HTTP endpoint, with their default
#: address (CoreDNS's).
HTTP_DEFAULTS = {"health": ":8080", "ready": ":8181", "prometheus": "localhost:9153"}


#: CoreDNS's C{reload} defaults: check every 30 s, give or take 15 s.
RELOAD_INTERVAL, RELOAD_JITTER = 30.0, 15.0


@attr.s(frozen=True, auto_attribs=True)
class ReloadSettings:
    """
    The C{reload} directive, as CoreDNS's: check the Corefile's checksum
    every C{interval} seconds, give or take up to C{jitter}, and reload it
    when it changed.
    """

    interval: float = RELOAD_INTERVAL
    jitter: float = RELOAD_JITTER
    filename: str = "Corefile"
    line: int = 0


@attr.s(frozen=True, auto_attribs=True)
class ServerBlock:
    """
    One server block: the zones it answers for, where, its idetcd block,
    its HTTP endpoints and its C{reload} (C{None} when absent).
    """

    zones: tuple
    port: int = DEFAULT_PORT
    binds: tuple = ()
    idetcd: IdetcdSettings = None
    filename: str = "Corefile"
    line: int = 0
    health: HttpAddress = None
    ready: HttpAddress = None
    forward: ForwardSettings = None
    prometheus: HttpAddress = None
    reload: ReloadSettings = None
    cache: CacheSettings = None
    transfer: TransferSettings = None
    log: tuple = ()  # a QueryLogSettings per log directive, in order
    errors: ErrorsSettings = None


def parse(text, filename="Corefile", environ=None):
    """
    The server blocks of the Corefile C{text}; L{CorefileError} says what is
    wrong, where.
    """
    reading = _Reading()
    blocks = tuple(
        reading.server_block(block)
        for block in server_blocks(text, filename, reading.readers, environ)
    )
    _check_overlaps(blocks)
    return blocks


def load(path, environ=None):
    """
    Read and L{parse} the Corefile at C{path}.
    """
    return parse(read(path), os.fspath(path), environ)


def _http_address(directive, text):
    """
    A CoreDNS listen address: C{:PORT}, C{IPv4:PORT}, C{[IPv6]:PORT} or
    C{localhost:PORT}.
    """
    port = HTTP_DEFAULTS[directive].rpartition(":")[2]
    expected = (
        f"{directive} takes an address such as :{port}, 127.0.0.1:{port} or [::1]:{port},"
        f" got {text!r}"
    )
    host, colon, port = text.rpartition(":")
    if not colon:
        raise ValueError(f"{expected} (a colon goes before the port)")
    if not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise ValueError(f"{expected} (the port must be 0 to 65535)")
    if host == "localhost":
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"{expected} (brackets are for IPv6 addresses)")
    elif ":" in host:
        raise ValueError(f"{expected} (write an IPv6 address in brackets)")
    if host:
        try:
            host = ipaddress.ip_address(host).compressed
        except ValueError:
            raise ValueError(f"{expected} (the host must be an IP address)") from None
    return HttpAddress(host, int(port))


def _reload(args):
    """
    C{reload [INTERVAL [JITTER]]}, with CoreDNS's bounds: an interval of
    at least 2 s, a jitter of at least 1 s and at most half the interval
    (a larger one is cut to half, as CoreDNS does).
    """
    interval = duration("reload's interval", args[0]) if args else RELOAD_INTERVAL
    jitter = duration("reload's jitter", args[1]) if len(args) > 1 else RELOAD_JITTER
    if interval < 2:
        raise ValueError(f"reload's interval must be at least 2s, got {args[0]!r}")
    if jitter < 1:
        raise ValueError(f"reload's jitter must be at least 1s, got {args[1]!r}")
    return interval, min(jitter, interval / 2)


def _read_reload(directive):
    args = directive.arguments(0, 2)
    interval, jitter = directive.convert(lambda: _reload(args))
    return ReloadSettings(interval, jitter, directive.filename, directive.line)


def _once(read_directive):
    """
    A reader, from C{read_directive}, of a directive that may stand at
    most once in a server block.
    """

    def reader(directive, block):
        block.once(directive)
        return read_directive(directive)

    return reader


def _bind(directive, block):
    args = directive.arguments(1, None)
    return directive.convert(lambda: ip_addresses("bind", args, block.values.get("bind", ())))


def _log(directive, block):
    return block.values.get("log", ()) + (read_log(directive),)


def _idetcd(directive, block):
    block.once(directive)
    return read_idetcd(directive, block.zones)


class _Reading:
    """
    Reading one Corefile: the reader of each server block directive (in
    the order the error for an unknown one names them), and the HTTP
    endpoints of the blocks read so far, which a later one's may not
    clash with.
    """

    def __init__(self):
        # (what, HttpAddress) of the HTTP endpoints of the blocks read so far.
        self.endpoints = []
        self.readers = {
            "bind": _bind,
            "cache": _once(read_cache),
            "forward": _once(read_forward),
            **dict.fromkeys(HTTP_DEFAULTS, self.http),
            "reload": _once(_read_reload),
            "transfer": _once(read_transfer),
            "log": _log,
            "errors": _once(read_errors),
            "idetcd": _idetcd,
        }

    def http(self, directive, block):
        """
        The address of an HTTP endpoint directive, checked against the
        block's other endpoints and those of the blocks before it.
        """
        block.once(directive)
        (text,) = directive.arguments(0, 1) or (HTTP_DEFAULTS[directive.name],)
        address = directive.convert(lambda: _http_address(directive.name, text))
        in_block = [
            (f"{name} on line {block.lines[name]}", other)
            for name, other in block.values.items()
            if name in HTTP_DEFAULTS
        ]
        for what, other in in_block + self.endpoints:
            if address.clashes(other):
                directive.fail(
                    directive.line,
                    f"{directive.name} {address} cannot listen:"
                    f" {what} already uses port {address.port}",
                )
        return address

    def server_block(self, block):
        """
        The L{ServerBlock} of a block whose directives are read, once the
        directives that need another one find it there.
        """
        values, lines = block.values, block.lines
        idetcd = values.get("idetcd")

        def fail(line, message):
            raise CorefileError(block.filename, line, message)

        def beside_idetcd(name, line):
            fail(line, f"{name!r} serves beside idetcd: this server block has no idetcd directive")

        http = {name: address for name, address in values.items() if name in HTTP_DEFAULTS}
        if http and idetcd is None:
            first = min(http, key=lines.get)
            fail(lines[first], f"{first!r} reports on idetcd: this server block has no idetcd directive")
        for name in ["forward", "reload"] + sorted({"log", "errors"} & lines.keys(), key=lines.get):
            if name in lines and idetcd is None:
                beside_idetcd(name, lines[name])
        cache = values.get("cache")
        if cache is not None and "forward" not in values:
            fail(cache.line, "'cache' keeps forwarded answers: this server block has no forward directive")
        transfer = values.get("transfer")
        if transfer is not None:
            if idetcd is None:
                beside_idetcd("transfer", lines["transfer"])
            transfer = transfer_for_zone(transfer, idetcd.pattern.zone)
        self.endpoints.extend(
            (f"{name} of the block on line {block.line}", address) for name, address in http.items()
        )
        return ServerBlock(
            block.zones, block.port, values.get("bind", ()), idetcd, block.filename, block.line,
            forward=values.get("forward"), reload=values.get("reload"), cache=cache, transfer=transfer,
            log=values.get("log", ()), errors=values.get("errors"), **http,
        )


def _check_overlaps(blocks):
    """
    Refuse two blocks that would answer the same zone on one socket.
    """
    for i, block in enumerate(blocks):
        for other in blocks[:i]:
            shared = set(block.zones) & set(other.zones)
            same_socket = (
                not block.binds or not other.binds or set(block.binds) & set(other.binds)
            )
            if block.port == other.port and shared and same_socket:
                raise CorefileError(
                    block.filename,
                    block.line,
                    f"zone {min(shared)} on port {block.port} is already served"
                    f" by the block on line {other.line}",
                )
