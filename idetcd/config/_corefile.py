"""
Read a Corefile, the configuration format of CoreDNS and of the 2018 idetcd
plugin, so that one file configures either.

Words follow the CoreDNS (Caddy v1) lexer: they split on white space; ``#``
at the start of a word comments out the rest of the line; double quotes make
one word of anything, across lines too, with ``\\"`` and ``\\\\`` as escapes;
``{$NAME}`` and ``{$NAME:default}`` take text from the environment.  One
addition: a template action ``{{ … }}`` stays in its word with its spaces and
quotes, so ``pattern w{{ "%02d" % ID }}.tf.local.`` needs no quoting.
"""

import ipaddress
import os
import re
from urllib.parse import urlsplit

import attr

from idetcd.common import EXIT_CONFIG
from idetcd.etcd.auth import Credentials
from idetcd.etcd.connections import request_url
from idetcd.etcd.tls import TlsSettings
from idetcd.names import Pattern, PatternError, absolute, name_problem

DEFAULT_PORT = 53


class CorefileError(ValueError):
    """
    A Corefile that cannot be used; C{str()} gives C{file:line: message}.
    """

    exit_status = EXIT_CONFIG

    def __init__(self, filename, line, message):
        super().__init__(f"{filename}:{line}: {message}")
        self.filename = filename
        self.line = line
        self.message = message


@attr.s(frozen=True, auto_attribs=True)
class IdetcdSettings:
    """
    The settings of one C{idetcd} block; see the README for their meaning.
    """

    pattern: Pattern
    endpoints: tuple = ("http://127.0.0.1:2379",)
    limit: int = 10
    ttl: int = 5
    lease: int = 10
    stale: int = 86400
    nameservers: int = 3
    addresses: tuple = ()
    prefix: str = "/idetcd/"
    state: str = None
    node: str = None
    wait: bool = False
    srv: int = 0
    tls: TlsSettings = None
    credentials: Credentials = None
    filename: str = "Corefile"
    line: int = 0


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


@attr.s(frozen=True, auto_attribs=True)
class Upstream:
    """
    A DNS server that C{forward} relays queries to.
    """

    host: str
    port: int = DEFAULT_PORT

    def __str__(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: Clients that may use C{forward} unless C{allow_recursion} says otherwise:
#: loopback and the private, shared (CGNAT) and link-local ranges.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
        "::1/128", "fc00::/7", "fe80::/10",
    )
)


@attr.s(frozen=True, auto_attribs=True)
class ForwardSettings:
    """
    The C{forward} directive: C{upstreams} holds L{Upstream}s and the paths
    of resolv.conf files, read when the node starts.  See the README.
    """

    upstreams: tuple
    policy: str = "random"
    max_concurrent: int = 1000
    timeout: float = 4.0
    allowed: tuple = PRIVATE_NETWORKS
    #: Consecutive failures that mark an upstream down (0: never).
    max_fails: int = 2
    #: Seconds between probes of an upstream that failed.
    health_check: float = 0.5
    force_tcp: bool = False
    prefer_udp: bool = False
    #: Seconds an idle TCP connection to an upstream is kept for reuse.
    expire: float = 10.0
    filename: str = "Corefile"
    line: int = 0


@attr.s(frozen=True, auto_attribs=True)
class CacheSettings:
    """
    The C{cache} directive, as CoreDNS's, for forwarded answers: at most
    C{success} and C{denial} answers of each kind, kept for their TTL
    within [C{*_min_ttl}, C{*_ttl}] seconds, answers under C{zones} only,
    and C{prefetch} (hits, seconds between them, percentage of the TTL
    left) or None.  See the README.
    """

    zones: tuple = (".",)
    success: int = 9984
    success_ttl: int = 3600
    success_min_ttl: int = 5
    denial: int = 9984
    denial_ttl: int = 1800
    denial_min_ttl: int = 5
    prefetch: tuple = None
    filename: str = "Corefile"
    line: int = 0


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
class TransferSettings:
    """
    The C{transfer} directive, as CoreDNS's: C{allowed} holds the networks
    that may transfer the zone (L{None} for C{*}, everyone), C{targets} the
    (address, port)s sent NOTIFY when it changes.
    """

    allowed: tuple
    targets: tuple = ()
    filename: str = "Corefile"
    line: int = 0


def _transfer_address(text):
    """
    What one C{to} address of C{transfer} allows, and where it sends NOTIFY:
    (network or L{None} for C{*}, (address, port) or L{None}).  Addresses
    and their ports are spelt as CoreDNS's: 10.0.0.1, 10.0.0.1:5300,
    [fd00::1]:5300, a network such as 10.0.0.0/24 (no NOTIFY), or C{*}.
    """
    if text == "*":
        return None, None
    expected = (
        f"transfer: expected an address (10.0.0.1, 10.0.0.1:5300, [fd00::1]:5300),"
        f" a network (10.0.0.0/24) or *, got {text!r}"
    )
    if "/" in text:
        try:
            return ipaddress.ip_network(text, strict=False), None
        except ValueError:
            raise ValueError(expected) from None
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(expected)
        port = rest[1:] or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(expected) from None
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"transfer: bad port in {text!r} (expected 1 to 65535)")
    return ipaddress.ip_network(address), (address.compressed, int(port))


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
    errors: "ErrorsSettings" = None


def parse(text, filename="Corefile", environ=None):
    """
    The server blocks of the Corefile C{text}; L{CorefileError} says what is
    wrong, where.
    """
    if environ is None:
        environ = os.environ
    tokens = _Lexer(text, filename, environ).tokens()
    reader = _Reader(filename)
    last_line = text.count("\n") + (not text.endswith("\n"))
    if not tokens:
        reader.fail(1, "no server block: the Corefile is empty (see Corefile.sample)")
    blocks = tuple(
        reader.server_block(keys, body)
        for keys, body in _Parser(tokens, filename, last_line).server_blocks()
    )
    reader.check_overlaps(blocks)
    return blocks


def load(path, environ=None):
    """
    Read and L{parse} the Corefile at C{path}.
    """
    return parse(read(path), os.fspath(path), environ)


def read(path):
    """
    The text of the Corefile at C{path}, or a L{CorefileError} saying why
    it cannot be had.
    """
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CorefileError(filename, 0, f"cannot read the Corefile: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CorefileError(filename, line, "is not UTF-8 text") from None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Token:
    text: str
    line: int
    end: int  # the line the token ends on
    brace: str = ""  # "{" or "}" for a block brace, "" for a word


# "{$" and, when it is well formed, the rest of the reference.
_ENV = re.compile(r"\{\$(?:([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\})?")


class _Failing:
    """
    Raise errors that name the Corefile (C{self.filename}).
    """

    def fail(self, line, message):
        raise CorefileError(self.filename, line, message)


class _Lexer(_Failing):
    """
    Split a Corefile into words and braces, each with its line.
    """

    def __init__(self, text, filename, environ):
        self.text = text
        self.filename = filename
        self.environ = environ
        self.pos = 0
        self.line = 1

    def tokens(self):
        out = []
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c == "\n":
                self.line += 1
                self.pos += 1
            elif c.isspace():
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif c == '"':
                out.append(self._quoted())
            else:
                out.extend(self._bare())
        return out

    def _quoted(self):
        text = self.text
        start = self.line
        chars = []
        i = self.pos + 1
        while True:
            if i >= len(text):
                self.fail(start, "unterminated quoted word: missing closing '\"'")
            c = text[i]
            if c == "\\" and text[i + 1 : i + 2] in ('"', "\\"):
                chars.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                break
            if c == "\n":
                self.line += 1
            chars.append(c)
            i += 1
        self.pos = i + 1
        return self._word("".join(chars), start)

    def _bare(self):
        text = self.text
        start = self.line
        i = self.pos
        while i < len(text) and not text[i].isspace():
            if text.startswith("{{", i):
                end = text.find("}}", i + 2)
                if end < 0:
                    self.fail(self.line, "unterminated template: '{{' without '}}'")
                self.line += text.count("\n", i, end)
                i = end + 2
            else:
                i += 1
        raw = text[self.pos : i]
        self.pos = i
        if raw in ("{", "}"):
            return [_Token(raw, start, start, raw)]
        if raw.endswith("{"):
            return [self._word(raw[:-1], start), _Token("{", self.line, self.line, "{")]
        return [self._word(raw, start)]

    def _word(self, raw, line):
        def variable(match):
            name, default = match.groups()
            if name is None:
                self.fail(
                    line,
                    f"bad environment reference in {raw!r}:"
                    " expected {$NAME} or {$NAME:default}",
                )
            value = self.environ.get(name, default)
            if value is None:
                self.fail(
                    line,
                    f"environment variable {name} is not set"
                    f" (give a default with {{${name}:default}})",
                )
            return value

        return _Token(_ENV.sub(variable, raw), line, self.line)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Directive:
    name: str
    line: int
    args: tuple
    block: tuple = None  # the directives inside its { … }; None without one


class _Parser(_Failing):
    """
    Group tokens into server blocks of directives, nested as written.
    """

    def __init__(self, tokens, filename, last_line):
        self.tokens = tokens
        self.filename = filename
        self.last_line = last_line
        self.pos = 0

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def server_blocks(self):
        """
        Yield (key tokens, directives) for each server block.
        """
        while self.peek():
            keys, opened = self._keys()
            yield keys, self._block(opened)

    def _keys(self):
        first = self.peek()
        if first.brace == "}":
            self.fail(first.line, "unexpected '}': no block is open")
        if first.brace == "{":
            self.fail(first.line, "expected server block keys (such as .:1053) before '{'")
        if first.text == "import":
            self.fail(first.line, "'import' is not supported: write the configuration out")
        keys = [first]
        self.pos += 1
        # Keys go on until '{'; a trailing comma carries them to the next line.
        while True:
            token = self.peek()
            last = keys[-1]
            if token is None or token.brace or (
                token.line != last.end and not last.text.endswith(",")
            ):
                break
            keys.append(token)
            self.pos += 1
        if token is None or token.brace != "{" or token.line != last.end:
            self.fail(last.end, "expected '{' after server block keys")
        self.pos += 1
        return keys, token

    def _block(self, opened):
        directives = []
        while True:
            token = self.peek()
            if token is None:
                self.fail(
                    self.last_line,
                    f"missing '}}' at the end of the file to close the block"
                    f" opened on line {opened.line}",
                )
            self.pos += 1
            if token.brace == "}":
                return tuple(directives)
            if token.brace == "{":
                self.fail(
                    token.line,
                    "unexpected '{': a block opens at the end of its directive's line",
                )
            args = []
            last = token
            while self.peek() and not self.peek().brace and self.peek().line == last.end:
                last = self.peek()
                args.append(last.text)
                self.pos += 1
            block = None
            after = self.peek()
            if after and after.brace == "{" and after.line == last.end:
                self.pos += 1
                block = self._block(after)
            directives.append(_Directive(token.text, token.line, tuple(args), block))


def _number(name, low, high, unit=""):
    def convert(args):
        text = args[0]
        if not (
            text.isascii()
            and text.isdigit()
            and len(text) <= len(str(high))
            and low <= int(text) <= high
        ):
            raise ValueError(
                f"{name} must be a whole number{unit} from {low} to {high}, got {text!r}"
            )
        return int(text)

    return convert


def _ip_addresses(directive, args, known=()):
    out = list(known)
    for arg in args:
        try:
            address = ipaddress.ip_address(arg)
        except ValueError:
            raise ValueError(
                f"{directive} takes IPv4 or IPv6 addresses, got {arg!r}"
            ) from None
        if address.compressed in out:
            raise ValueError(f"{directive} lists {address.compressed} twice")
        out.append(address.compressed)
    return tuple(out)


def _addresses(args):
    addresses = _ip_addresses("address", args)
    for text in addresses:
        address = ipaddress.ip_address(text)
        if address.is_unspecified or address.is_multicast:
            raise ValueError(f"address {text} cannot be announced: other nodes cannot reach it")
    return addresses


def _endpoint(text):
    expected = f"endpoint {text!r} is not an etcd URL such as http://127.0.0.1:2379"
    try:
        url = urlsplit(text)
        port = url.port
        request_url(text).to_uri()  # what the HTTP client takes: no IPv6 zone, say
    except ValueError as e:
        raise ValueError(f"{expected}: {e}") from None
    if url.scheme not in ("http", "https") or not url.hostname or port == 0:
        raise ValueError(f"{expected} (or the word embedded)")
    if url.username is not None or url.password is not None:
        raise ValueError(f"{expected}: user names and passwords are not supported")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(f"{expected}: it must not have a path, query or fragment")
    return f"{url.scheme}://{url.netloc}"


def _endpoints(args):
    if "embedded" in args:
        if len(args) > 1:
            raise ValueError(
                "endpoint embedded runs etcd inside this process:"
                " it cannot be listed with other endpoints"
            )
        return ("embedded",)
    out = []
    for arg in args:
        url = _endpoint(arg)
        if url in out:
            raise ValueError(f"endpoint lists {url} twice")
        out.append(url)
    return tuple(out)


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


def _upstream(text):
    """
    A C{forward} upstream: C{IP}, C{IP:PORT}, C{[IPv6]:PORT}, each maybe
    after C{dns://}, or the path of a resolv.conf file (kept as text).
    """
    rest = text
    scheme, separator, after = text.partition("://")
    if separator:
        if scheme.lower() != "dns":
            raise ValueError(f"forward to {text!r}: only plain DNS (dns://) is supported")
        rest = after
    elif "/" in text:
        return text
    expected = (
        "forward takes upstreams such as 10.0.0.1, 10.0.0.1:5353, [fd00::1]:53"
        f" or /etc/resolv.conf, got {text!r}"
    )
    port = str(DEFAULT_PORT)
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or ":" not in host or tail[:1] not in ("", ":"):
            raise ValueError(f"{expected} (brackets hold an IPv6 address)")
        port = tail[1:] or port
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
    else:
        host = rest
    if not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        raise ValueError(f"{expected} (the port must be 1 to 65535)")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{expected} (the host must be an IP address)") from None
    return Upstream(address.compressed, int(port))


def _networks(args):
    out = []
    for arg in args:
        try:
            network = ipaddress.ip_network(arg)
        except ValueError as e:
            raise ValueError(
                "allow_recursion takes networks such as 10.0.0.0/8 or addresses such as"
                f" 192.0.2.7, got {arg!r} ({e})"
            ) from None
        if network in out:
            raise ValueError(f"allow_recursion lists {network} twice")
        out.append(network)
    return tuple(out)


def _seconds(name, low, high):
    def convert(args):
        text = args[0]
        if not (re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3})?", text) and low <= float(text) <= high):
            raise ValueError(f"{name} must be a number of seconds from {low} to {high}, got {text!r}")
        return float(text)

    return convert


_DURATION = re.compile(r"(?:[0-9]{1,6}(?:\.[0-9]{1,3})?(?:h|ms|m|s))+")
_DURATION_PART = re.compile(r"([0-9.]+)(h|ms|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _duration(name, text):
    """
    Seconds in a Go duration such as C{30s}, C{1m30s} or C{500ms}, as
    CoreDNS's directives take them.
    """
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{name} must be a duration such as 30s, 1m or 1m30s, got {text!r}")
    return sum(float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text))


def _reload(args):
    """
    C{reload [INTERVAL [JITTER]]}, with CoreDNS's bounds: an interval of
    at least 2 s, a jitter of at least 1 s and at most half the interval
    (a larger one is cut to half, as CoreDNS does).
    """
    interval = _duration("reload's interval", args[0]) if args else RELOAD_INTERVAL
    jitter = _duration("reload's jitter", args[1]) if len(args) > 1 else RELOAD_JITTER
    if interval < 2:
        raise ValueError(f"reload's interval must be at least 2s, got {args[0]!r}")
    if jitter < 1:
        raise ValueError(f"reload's jitter must be at least 1s, got {args[1]!r}")
    return interval, min(jitter, interval / 2)


def _choice(name, choices):
    def convert(args):
        if args[0] not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {args[0]!r}")
        return args[0]

    return convert

def _tls(args):
    tls = TlsSettings.from_args(args)
    tls.policy()  # reads the files: a bad one is reported at its line
    return tls


def _read_password(path):
    try:
        with open(path, encoding="utf-8") as f:
            password = f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise ValueError(f"credentials cannot read the password file {path}: {reason}") from None
    if not password:
        raise ValueError(f"credentials: the password file {path} is empty")
    return password


def _credentials(args):
    """
    C{USERNAME PASSWORD}, as CoreDNS's etcd plugin has it, or C{USERNAME
    file PATH} to keep the password out of the Corefile.
    """
    if len(args) == 3 and args[1] != "file":
        raise ValueError(
            f"credentials takes USERNAME PASSWORD or USERNAME file PATH, got {' '.join(map(repr, args))}"
        )
    user = args[0]
    password = args[1] if len(args) == 2 else _read_password(args[2])
    if not user.strip() or not password:
        raise ValueError("credentials needs a user name and a password that are not empty")
    return Credentials(user, password)


def _prefix(args):
    """
    An etcd key prefix that starts and ends with C{/}, or C{""} (the
    original plugin's keys): C{idetcd} or C{/idetcd} would make keys that
    nodes writing C{/idetcd/} never see.
    """
    prefix = args[0]
    if prefix and not (prefix.startswith("/") and prefix.endswith("/")):
        raise ValueError(
            f"prefix must start and end with '/', such as /idetcd/, or be \"\""
            f" for the original plugin's keys; got {prefix!r}"
        )
    return prefix


def _text(name, what, spaces):
    def convert(args):
        text = args[0]
        if not (text.isprintable() and text.strip()) or (
            not spaces and any(c.isspace() for c in text)
        ):
            raise ValueError(f"{name} must be {what}, got {text!r}")
        return text

    return convert


# directive: (IdetcdSettings field, fewest arguments, most (None: any), convert)
_SETTINGS = {
    "address": ("addresses", 1, None, _addresses),
    "credentials": ("credentials", 2, 3, _credentials),
    "endpoint": ("endpoints", 1, None, _endpoints),
    "lease": ("lease", 1, 1, _number("lease", 2, 3600, " of seconds")),
    "limit": ("limit", 1, 1, _number("limit", 1, 50000)),
    "nameservers": ("nameservers", 1, 1, _number("nameservers", 1, 13)),
    "node": ("node", 1, 1, _text("node", "a name without spaces", spaces=False)),
    "pattern": ("pattern", 1, 1, lambda args: Pattern.parse(args[0])),
    "prefix": ("prefix", 1, 1, _prefix),
    "srv": ("srv", 1, 1, _number("srv", 1, 65535)),
    "stale": ("stale", 1, 1, _number("stale", 0, 259200, " of seconds")),
    "state": ("state", 1, 1, _text("state", "a directory", spaces=True)),
    "tls": ("tls", 0, 3, _tls),
    "ttl": ("ttl", 1, 1, _number("ttl", 0, 86400, " of seconds")),
    "wait": ("wait", 0, 0, lambda args: True),
}


#: How C{forward} orders its upstreams for each query (CoreDNS's policies).
POLICIES = ("random", "round_robin", "sequential")
#: The most upstreams one C{forward} takes (CoreDNS's limit).
MAX_UPSTREAMS = 15

# forward's block: directive: (ForwardSettings field, fewest, most, convert)
def _between(name, low, high):
    def convert(args):
        seconds = _duration(name, args[0])
        if not low <= seconds <= high:
            raise ValueError(f"{name} must be from {low:g}s to {high:g}s, got {args[0]!r}")
        return seconds

    return convert


_FORWARD_SETTINGS = {
    "allow_recursion": ("allowed", 1, None, _networks),
    "expire": ("expire", 1, 1, _between("expire", 0, 3600)),
    "force_tcp": ("force_tcp", 0, 0, lambda args: True),
    "health_check": ("health_check", 1, 1, _between("health_check", 0.01, 3600)),
    "max_concurrent": ("max_concurrent", 1, 1, _number("max_concurrent", 1, 10000)),
    "max_fails": ("max_fails", 1, 1, _number("max_fails", 0, 1000)),
    "policy": ("policy", 1, 1, _choice("policy", POLICIES)),
    "prefer_udp": ("prefer_udp", 0, 0, lambda args: True),
    "timeout": ("timeout", 1, 1, _seconds("timeout", 0.1, 10)),
}

#: The C{cache} settings CoreDNS has that idetcd does not.
_CACHE_UNSUPPORTED = ("serve_stale", "servfail", "disable", "keepttl")
#: The most entries one kind of cached answer may take.
MAX_CACHE = 1_000_000


def _zone(directive, text):
    zone = absolute(text)
    problem = zone != "." and name_problem(zone)
    if problem:
        raise ValueError(f"{directive} takes zones, and {text!r} is not one: {zone!r} {problem}")
    return zone


def _prefetch(args):
    """
    C{AMOUNT [DURATION [PERCENTAGE%]]}: (hits, seconds, fraction), with
    CoreDNS's defaults of one minute and 10%.
    """
    amount = _number("prefetch's amount", 1, 1_000_000)(args)
    seconds = _between("prefetch's duration", 1, 86400)(args[1:]) if len(args) > 1 else 60.0
    percentage = 10
    if len(args) > 2:
        text = args[2]
        if not (re.fullmatch(r"[0-9]{1,2}%", text) and 10 <= int(text[:-1]) <= 90):
            raise ValueError(f"prefetch's percentage must be from 10% to 90%, got {text!r}")
        percentage = int(text[:-1])
    return amount, seconds, percentage / 100


def _within(zone, parent):
    return parent == "." or zone == parent or zone.endswith("." + parent)


class _Reader(_Failing):
    """
    Give meaning to parsed directives.
    """

    def __init__(self, filename):
        self.filename = filename
        # (what, HttpAddress) of the HTTP endpoints of the blocks read so far.
        self.endpoints = []

    def arguments(self, directive, fewest, most, block=False):
        n = len(directive.args)
        name = repr(directive.name)
        if most == 0 and n:
            self.fail(directive.line, f"{name} takes no arguments, got {n}")
        if most is None and n < fewest:
            self.fail(directive.line, f"{name} needs at least {fewest} argument")
        if fewest == most == 1 and n != 1:
            self.fail(directive.line, f"{name} needs 1 argument, got {n}")
        if fewest == 0 and most == 1 and n > 1:
            self.fail(directive.line, f"{name} takes at most 1 argument, got {n}")
        if n < fewest or (most is not None and n > most):
            self.fail(directive.line, f"{name} takes {fewest} to {most} arguments, got {n}")
        if directive.block is not None and not block:
            self.fail(directive.line, f"{name} takes no block")
        return directive.args

    def once(self, seen, directive, where):
        if directive.name in seen:
            self.fail(
                directive.line,
                f"duplicate {directive.name!r} in {where}"
                f" (first on line {seen[directive.name]})",
            )
        seen[directive.name] = directive.line

    def server_block(self, keys, body):
        zones, port = self.keys(keys)
        binds = ()
        idetcd = forward = reload = cache = transfer = None
        seen = {}
        http = {}
        logging = {}
        for directive in body:
            if directive.name == "bind":
                args = self.arguments(directive, 1, None)
                binds = self.convert(directive, lambda: _ip_addresses("bind", args, binds))
            elif directive.name == "idetcd":
                self.once(seen, directive, "this server block")
                idetcd = self.idetcd(directive, zones)
            elif directive.name in HTTP_DEFAULTS:
                self.once(seen, directive, "this server block")
                http[directive.name] = self.http(directive, http)
            elif directive.name == "forward":
                self.once(seen, directive, "this server block")
                forward = self.forward(directive)
            elif directive.name == "cache":
                self.once(seen, directive, "this server block")
                cache = self.cache(directive)
            elif directive.name in ("log", "errors"):
                if directive.name == "errors":
                    self.once(seen, directive, "this server block")
                logging.setdefault(directive.name, []).append(_logging(self, directive))
            elif directive.name == "reload":
                self.once(seen, directive, "this server block")
                args = self.arguments(directive, 0, 2)
                interval, jitter = self.convert(directive, lambda: _reload(args))
                reload = ReloadSettings(interval, jitter, self.filename, directive.line)
            elif directive.name == "transfer":
                self.once(seen, directive, "this server block")
                transfer = self.transfer(directive)
            else:
                self.fail(
                    directive.line,
                    f"unknown directive {directive.name!r}"
                    f" (expected one of: bind, cache, forward, {', '.join(HTTP_DEFAULTS)}, reload, transfer, log, errors, idetcd)",
                )
        if http and idetcd is None:
            first = min(http, key=seen.get)
            self.fail(seen[first], f"{first!r} reports on idetcd: this server block has no idetcd directive")
        besides = [("forward", forward), ("reload", reload)]
        besides += [(name, settings) for name, each in logging.items() for settings in each]
        for name, beside in besides:
            if beside is not None and idetcd is None:
                self.fail(beside.line, f"{name!r} serves beside idetcd: this server block has no idetcd directive")
        if cache is not None and forward is None:
            self.fail(cache.line, "'cache' keeps forwarded answers: this server block has no forward directive")
        if transfer is not None:
            transfer = self.transfer_zones(transfer, idetcd)
        self.endpoints.extend(
            (f"{name} of the block on line {keys[0].line}", address) for name, (address, _) in http.items()
        )
        return ServerBlock(
            zones, port, binds, idetcd, self.filename, keys[0].line,
            forward=forward, reload=reload, cache=cache, transfer=transfer,
            log=tuple(logging.get("log", ())), errors=logging.get("errors", [None])[0],
            **{k: a for k, (a, _) in http.items()},
        )

    def transfer(self, directive):
        """
        C{transfer [ZONE…] { to ADDRESS… }}: (the zones it names, the
        settings); C{to} may come more than once.
        """
        args = self.arguments(directive, 0, None, block=True)
        allowed, targets = [], []
        for setting in directive.block or ():
            if setting.name != "to":
                self.fail(setting.line, f"unknown directive {setting.name!r} in transfer (expected: to)")
            for text in self.arguments(setting, 1, None):
                network, target = self.convert(setting, lambda: _transfer_address(text))
                if network not in allowed:
                    allowed.append(network)
                if target is not None and target not in targets:
                    targets.append(target)
        if not allowed:
            self.fail(
                directive.line,
                "transfer needs a block naming who may transfer the zone, such as:"
                " transfer { to 10.0.0.1 }",
            )
        zones = tuple(absolute(zone) for zone in args)
        return zones, TransferSettings(tuple(allowed), tuple(targets), self.filename, directive.line)

    def transfer_zones(self, transfer, idetcd):
        """
        The C{transfer} settings, once its zones are known to be the one
        the idetcd block serves: the only zone it transfers.
        """
        zones, settings = transfer
        if idetcd is None:
            self.fail(settings.line, "'transfer' serves beside idetcd: this server block has no idetcd directive")
        zone = idetcd.pattern.zone
        for other in zones:
            if other.lower() != zone.lower():
                self.fail(
                    settings.line,
                    f"transfer can only transfer the zone of the pattern, {zone}, not {other}",
                )
        return settings

    def forward(self, directive):
        """
        C{forward . UPSTREAM… [{ settings }]}: only C{.} as FROM, which
        relays every name outside the node's zone.
        """
        args = self.arguments(directive, 0, None, block=True)
        if len(args) < 2:
            self.fail(
                directive.line,
                "forward needs FROM and at least one upstream, such as: forward . 10.0.0.1"
                " (or forward . /etc/resolv.conf)",
            )
        origin = args[0][len("dns://") :] if args[0].lower().startswith("dns://") else args[0]
        if origin != ".":
            self.fail(
                directive.line,
                f"forward relays every name outside this node's zones: FROM must be '.',"
                f" got {args[0]!r}",
            )
        upstreams = []
        for text in args[1:]:
            upstream = self.convert(directive, lambda: _upstream(text))
            if upstream in upstreams:
                self.fail(directive.line, f"forward lists {upstream} twice")
            upstreams.append(upstream)
        if len(upstreams) > MAX_UPSTREAMS:
            self.fail(
                directive.line,
                f"forward takes at most {MAX_UPSTREAMS} upstreams, got {len(upstreams)}",
            )
        seen, values = self.settings(directive, _FORWARD_SETTINGS)
        if values.get("max_fails") == 0 and "health_check" in seen:
            self.fail(seen["health_check"], "health_check probes failed upstreams, and max_fails 0 marks none failed")
        return ForwardSettings(
            tuple(upstreams), filename=self.filename, line=directive.line, **values
        )

    def cache(self, directive):
        """
        C{cache [TTL] [ZONES…] [{ success CAPACITY [TTL [MINTTL]]; denial
        CAPACITY [TTL [MINTTL]]; prefetch AMOUNT [DURATION [PERCENTAGE%]] }]},
        as CoreDNS's.
        """
        args = self.arguments(directive, 0, None, block=True)
        values = {}
        if args and args[0].isdigit():
            ttl = self.convert(directive, lambda: _number("cache's TTL", 1, 86400, " of seconds")(args))
            values.update(success_ttl=ttl, denial_ttl=ttl)
            args = args[1:]
        if args:
            values["zones"] = tuple(self.convert(directive, lambda: _zone("cache", zone)) for zone in args)
        seen = {}
        for setting in directive.block or ():
            if setting.name in _CACHE_UNSUPPORTED:
                self.fail(setting.line, f"cache's {setting.name} is not supported by idetcd")
            if setting.name not in ("success", "denial", "prefetch"):
                self.fail(
                    setting.line,
                    f"unknown directive {setting.name!r} in cache (expected one of: success, denial, prefetch)",
                )
            self.once(seen, setting, "cache")
            if setting.name == "prefetch":
                values["prefetch"] = self.convert(setting, lambda: _prefetch(self.arguments(setting, 1, 3)))
                continue
            kind = setting.name
            given = self.arguments(setting, 1, 3)
            values[kind] = self.convert(setting, lambda: _number(f"{kind}'s capacity", 1, MAX_CACHE)(given))
            if len(given) > 1:
                values[f"{kind}_ttl"] = self.convert(
                    setting, lambda: _number(f"{kind}'s TTL", 1, 86400, " of seconds")(given[1:])
                )
            if len(given) > 2:
                values[f"{kind}_min_ttl"] = self.convert(
                    setting, lambda: _number(f"{kind}'s minimum TTL", 0, 86400, " of seconds")(given[2:])
                )
        settings = CacheSettings(filename=self.filename, line=directive.line, **values)
        for kind in ("success", "denial"):
            if getattr(settings, f"{kind}_min_ttl") > getattr(settings, f"{kind}_ttl"):
                self.fail(
                    seen.get(kind, directive.line),
                    f"cache's {kind} minimum TTL {getattr(settings, f'{kind}_min_ttl')} is above"
                    f" its TTL {getattr(settings, f'{kind}_ttl')}",
                )
        return settings

    def settings(self, directive, table):
        """
        The settings in C{directive}'s block, each at most once, by the
        C{table} of their directives: (the line of each, values by field).
        """
        seen = {}
        values = {}
        for setting in directive.block or ():
            if setting.name not in table:
                self.fail(
                    setting.line,
                    f"unknown directive {setting.name!r} in {directive.name}"
                    f" (expected one of: {', '.join(table)})",
                )
            self.once(seen, setting, directive.name)
            field, fewest, most, convert = table[setting.name]
            args = self.arguments(setting, fewest, most)
            values[field] = self.convert(setting, lambda: convert(args))
        return seen, values

    def http(self, directive, others):
        """
        The address of an HTTP endpoint directive, with its line, checked
        against the block's other endpoints (C{others}, by directive).
        """
        (text,) = self.arguments(directive, 0, 1) or (HTTP_DEFAULTS[directive.name],)
        address = self.convert(directive, lambda: _http_address(directive.name, text))
        in_block = [(f"{name} on line {line}", other) for name, (other, line) in others.items()]
        for what, other in in_block + self.endpoints:
            if address.clashes(other):
                self.fail(
                    directive.line,
                    f"{directive.name} {address} cannot listen:"
                    f" {what} already uses port {address.port}",
                )
        return address, directive.line

    def keys(self, tokens):
        zones = []
        ports = {}
        for token in tokens:
            for key in filter(None, token.text.split(",")):
                zone, port = self.key(key, token.line)
                if zone in zones:
                    self.fail(token.line, f"zone {zone} is listed twice in the server block keys")
                zones.append(zone)
                ports.setdefault(port, key)
        if not zones:
            self.fail(tokens[0].line, "expected server block keys (such as .:1053) before '{'")
        if len(ports) > 1:
            self.fail(
                tokens[0].line,
                "the keys of one server block must share one port, got "
                + " and ".join(repr(key) for key in ports.values()),
            )
        return tuple(zones), next(iter(ports))

    def key(self, key, line):
        rest = key
        if "://" in rest:
            scheme, _, rest = rest.partition("://")
            if scheme.lower() != "dns":
                self.fail(line, f"server block key {key!r}: only dns:// is supported")
        if rest.startswith("("):
            self.fail(line, f"snippets such as {key!r} are not supported")
        zone, colon, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
        if colon and not (port.isascii() and port.isdigit() and int(port) <= 65535):
            self.fail(
                line,
                f"server block key {key!r} has a bad port {port!r} (expected 0 to 65535)",
            )
        if not zone:
            self.fail(line, f"server block key {key!r} has no zone (the root zone is '.')")
        zone = absolute(zone)
        problem = zone != "." and name_problem(zone)
        if problem:
            self.fail(line, f"server block key {key!r} is not a valid zone: {zone!r} {problem}")
        return zone, int(port) if colon else DEFAULT_PORT

    def convert(self, directive, convert):
        try:
            return convert()
        except ValueError as e:
            self.fail(directive.line, str(e))

    def idetcd(self, directive, zones):
        self.arguments(directive, 0, 0, block=True)
        if directive.block is None:
            self.fail(
                directive.line,
                "idetcd needs a block with at least a pattern:"
                " idetcd { pattern worker{{.ID}}.tf.local. }",
            )
        seen, values = self.settings(directive, _SETTINGS)
        if "pattern" not in values:
            self.fail(
                directive.line,
                "idetcd needs a pattern, such as: pattern worker{{.ID}}.tf.local.",
            )
        settings = IdetcdSettings(filename=self.filename, line=directive.line, **values)
        pattern = settings.pattern
        try:
            pattern.check(settings.limit)
        except PatternError as e:
            self.fail(seen["pattern"], str(e))
        if settings.tls is not None and not any(url.startswith("https://") for url in settings.endpoints):
            self.fail(
                seen["tls"],
                "tls is for https:// endpoints, and this idetcd block has none:"
                " list etcd as https://HOST:PORT in 'endpoint'",
            )
        if not any(_within(pattern.zone, zone) for zone in zones):
            self.fail(
                seen["pattern"],
                f"pattern {pattern.text!r} lies outside this block's zones"
                f" ({', '.join(zones)}): its names are in {pattern.zone}",
            )
        return settings

    def check_overlaps(self, blocks):
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
                    self.fail(
                        block.line,
                        f"zone {min(shared)} on port {block.port} is already served"
                        f" by the block on line {other.line}",
                    )


# The query log (CoreDNS's log) and the error log (CoreDNS's errors).

#: CoreDNS's Common Log Format, and its combined one (with the opcode).
COMMON_LOG_FORMAT = (
    '{remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}"'
    " {rcode} {>rflags} {rsize} {duration}"
)
COMBINED_LOG_FORMAT = COMMON_LOG_FORMAT + ' "{>opcode}"'
#: The placeholders a log format may use, CoreDNS's names.
LOG_PLACEHOLDERS = (
    "remote", "port", "type", "class", "name", "proto", "size", "rcode", "rsize", "duration",
    ">id", ">do", ">bufsize", ">rflags", ">opcode",
)
LOG_PLACEHOLDER = re.compile(r"\{(>?[a-z]+)\}")
#: CoreDNS's classes of responses: success, denial (NXDOMAIN, NODATA), error.
LOG_CLASSES = ("all", "success", "denial", "error")
#: Lines each of log and errors writes per second at most, unless 'limit' says.
LOG_LIMIT = 100
LOG_LEVELS = ("error", "warning", "info", "debug")


@attr.s(frozen=True, auto_attribs=True)
class QueryLogSettings:
    """
    One C{log} directive: the queries for C{names} (and below) whose
    response is of one of C{classes}, written in C{format}, at most
    C{limit} lines per second.
    """

    names: tuple = (".",)
    format: str = COMMON_LOG_FORMAT
    classes: frozenset = frozenset({"all"})
    limit: int = LOG_LIMIT
    filename: str = "Corefile"
    line: int = 0


@attr.s(frozen=True, auto_attribs=True)
class ErrorsSettings:
    """
    The C{errors} directive: SERVFAIL answers logged, at most C{limit}
    lines per second; those matching a C{consolidate} pattern
    (seconds, regular expression, level) summed up once per period.
    """

    consolidate: tuple = ()
    limit: int = LOG_LIMIT
    filename: str = "Corefile"
    line: int = 0


def _log_format(text):
    text = text.replace("{common}", COMMON_LOG_FORMAT).replace("{combined}", COMBINED_LOG_FORMAT)
    for placeholder in LOG_PLACEHOLDER.findall(text):
        if placeholder not in LOG_PLACEHOLDERS:
            raise ValueError(
                f"log format has an unknown placeholder {{{placeholder}}} (expected {{common}},"
                f" {{combined}} or: {', '.join('{' + p + '}' for p in LOG_PLACEHOLDERS)})"
            )
    return text


def _log_classes(args):
    for word in args:
        if word not in LOG_CLASSES:
            raise ValueError(f"class must be one of {', '.join(LOG_CLASSES)}, got {word!r}")
    return frozenset(args)


def _consolidate(args):
    seconds = _duration("consolidate's period", args[0])
    if seconds < 1:
        raise ValueError(f"consolidate's period must be at least 1s, got {args[0]!r}")
    try:
        re.compile(args[1])
    except re.error as e:
        raise ValueError(f"consolidate's pattern {args[1]!r} is not a regular expression: {e}") from None
    level = args[2] if len(args) > 2 else "error"
    if level not in LOG_LEVELS:
        raise ValueError(f"consolidate's level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return seconds, args[1], level


def _log_names(args):
    names = []
    for text in args:
        name = absolute(text)
        problem = name != "." and name_problem(name)
        if problem:
            raise ValueError(f"log's NAMES must be domain names: {name!r} {problem}")
        names.append(name)
    return tuple(names) or (".",)


def _logging(reader, directive):
    """
    C{log [NAMES...] [FORMAT] [{ class CLASSES... / limit N }]} or C{errors
    [{ consolidate DURATION REGEXP [LEVEL]... / limit N }]}, read by the
    L{_Reader} C{reader}.
    """
    limit = ("limit", 1, 1, _number("limit", 1, 100000, " of lines per second"))
    if directive.name == "errors":
        reader.arguments(directive, 0, 0, block=True)
        table = {"consolidate": ("consolidate", 2, 3, _consolidate), "limit": limit}
    else:
        reader.arguments(directive, 0, None, block=True)
        table = {"class": ("classes", 1, None, _log_classes), "limit": limit}
    values = {"limit": LOG_LIMIT}
    consolidate = []
    seen = {}
    for setting in directive.block or ():
        if setting.name not in table:
            reader.fail(
                setting.line,
                f"unknown directive {setting.name!r} in {directive.name} (expected one of: {', '.join(table)})",
            )
        if setting.name != "consolidate":
            reader.once(seen, setting, directive.name)
        field, fewest, most, convert = table[setting.name]
        args = reader.arguments(setting, fewest, most)
        value = reader.convert(setting, lambda: convert(args))
        if field == "consolidate":
            consolidate.append(value)
        else:
            values[field] = value
    where = {"filename": reader.filename, "line": directive.line}
    if directive.name == "errors":
        return ErrorsSettings(tuple(consolidate), values["limit"], **where)
    args = list(directive.args)
    log_format = COMMON_LOG_FORMAT
    if args and "{" in args[-1]:
        log_format = reader.convert(directive, lambda: _log_format(args.pop()))
    names = reader.convert(directive, lambda: _log_names(args))
    classes = values.get("classes", frozenset({"all"}))
    return QueryLogSettings(names, log_format, classes, values["limit"], **where)
