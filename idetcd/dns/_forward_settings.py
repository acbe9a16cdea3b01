"""
The C{forward} and C{cache} directives of a server block, read: where
names outside the node's zones are relayed, and how forwarded answers
are kept.  See the README for their settings.
"""

import ipaddress
import re

import attr

from idetcd.config import DEFAULT_PORT, choice, duration_between, number, seconds, zone


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


#: How C{forward} orders its upstreams for each query (CoreDNS's policies).
POLICIES = ("random", "round_robin", "sequential")
#: The most upstreams one C{forward} takes (CoreDNS's limit).
MAX_UPSTREAMS = 15


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


# forward's block: directive: (ForwardSettings field, fewest, most, convert)
_FORWARD_SETTINGS = {
    "allow_recursion": ("allowed", 1, None, _networks),
    "expire": ("expire", 1, 1, duration_between("expire", 0, 3600)),
    "force_tcp": ("force_tcp", 0, 0, lambda args: True),
    "health_check": ("health_check", 1, 1, duration_between("health_check", 0.01, 3600)),
    "max_concurrent": ("max_concurrent", 1, 1, number("max_concurrent", 1, 10000)),
    "max_fails": ("max_fails", 1, 1, number("max_fails", 0, 1000)),
    "policy": ("policy", 1, 1, choice("policy", POLICIES)),
    "prefer_udp": ("prefer_udp", 0, 0, lambda args: True),
    "timeout": ("timeout", 1, 1, seconds("timeout", 0.1, 10)),
}

#: The C{cache} settings CoreDNS has that idetcd does not.
_CACHE_UNSUPPORTED = ("serve_stale", "servfail", "disable", "keepttl")
#: The most entries one kind of cached answer may take.
MAX_CACHE = 1_000_000


def _prefetch(args):
    """
    C{AMOUNT [DURATION [PERCENTAGE%]]}: (hits, seconds, fraction), with
    CoreDNS's defaults of one minute and 10%.
    """
    amount = number("prefetch's amount", 1, 1_000_000)(args)
    period = duration_between("prefetch's duration", 1, 86400)(args[1:]) if len(args) > 1 else 60.0
    percentage = 10
    if len(args) > 2:
        text = args[2]
        if not (re.fullmatch(r"[0-9]{1,2}%", text) and 10 <= int(text[:-1]) <= 90):
            raise ValueError(f"prefetch's percentage must be from 10% to 90%, got {text!r}")
        percentage = int(text[:-1])
    return amount, period, percentage / 100


def read_forward(directive):
    """
    C{forward . UPSTREAM… [{ settings }]}: only C{.} as FROM, which
    relays every name outside the node's zone.
    """
    args = directive.arguments(0, None, block=True)
    if len(args) < 2:
        directive.fail(
            directive.line,
            "forward needs FROM and at least one upstream, such as: forward . 10.0.0.1"
            " (or forward . /etc/resolv.conf)",
        )
    origin = args[0][len("dns://") :] if args[0].lower().startswith("dns://") else args[0]
    if origin != ".":
        directive.fail(
            directive.line,
            f"forward relays every name outside this node's zones: FROM must be '.',"
            f" got {args[0]!r}",
        )
    upstreams = []
    for text in args[1:]:
        upstream = directive.convert(lambda: _upstream(text))
        if upstream in upstreams:
            directive.fail(directive.line, f"forward lists {upstream} twice")
        upstreams.append(upstream)
    if len(upstreams) > MAX_UPSTREAMS:
        directive.fail(
            directive.line,
            f"forward takes at most {MAX_UPSTREAMS} upstreams, got {len(upstreams)}",
        )
    seen, values = directive.settings(_FORWARD_SETTINGS)
    if values.get("max_fails") == 0 and "health_check" in seen:
        directive.fail(seen["health_check"], "health_check probes failed upstreams, and max_fails 0 marks none failed")
    return ForwardSettings(
        tuple(upstreams), filename=directive.filename, line=directive.line, **values
    )


def read_cache(directive):
    """
    C{cache [TTL] [ZONES…] [{ success CAPACITY [TTL [MINTTL]]; denial
    CAPACITY [TTL [MINTTL]]; prefetch AMOUNT [DURATION [PERCENTAGE%]] }]},
    as CoreDNS's.
    """
    args = directive.arguments(0, None, block=True)
    values = {}
    if args and args[0].isdigit():
        ttl = directive.convert(lambda: number("cache's TTL", 1, 86400, " of seconds")(args))
        values.update(success_ttl=ttl, denial_ttl=ttl)
        args = args[1:]
    if args:
        values["zones"] = tuple(directive.convert(lambda: zone("cache", text)) for text in args)
    seen = {}
    for setting in directive.block or ():
        if setting.name in _CACHE_UNSUPPORTED:
            setting.fail(setting.line, f"cache's {setting.name} is not supported by idetcd")
        if setting.name not in ("success", "denial", "prefetch"):
            setting.fail(
                setting.line,
                f"unknown directive {setting.name!r} in cache (expected one of: success, denial, prefetch)",
            )
        setting.once(seen, "cache")
        if setting.name == "prefetch":
            values["prefetch"] = setting.convert(lambda: _prefetch(setting.arguments(1, 3)))
            continue
        kind = setting.name
        given = setting.arguments(1, 3)
        values[kind] = setting.convert(lambda: number(f"{kind}'s capacity", 1, MAX_CACHE)(given))
        if len(given) > 1:
            values[f"{kind}_ttl"] = setting.convert(
                lambda: number(f"{kind}'s TTL", 1, 86400, " of seconds")(given[1:])
            )
        if len(given) > 2:
            values[f"{kind}_min_ttl"] = setting.convert(
                lambda: number(f"{kind}'s minimum TTL", 0, 86400, " of seconds")(given[2:])
            )
    settings = CacheSettings(filename=directive.filename, line=directive.line, **values)
    for kind in ("success", "denial"):
        if getattr(settings, f"{kind}_min_ttl") > getattr(settings, f"{kind}_ttl"):
            directive.fail(
                seen.get(kind, directive.line),
                f"cache's {kind} minimum TTL {getattr(settings, f'{kind}_min_ttl')} is above"
                f" its TTL {getattr(settings, f'{kind}_ttl')}",
            )
    return settings
