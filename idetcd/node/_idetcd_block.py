"""
The C{idetcd} block of a server block, read into L{IdetcdSettings}: the
pattern (names), the etcd settings (etcd's own readers), and the node's
lease, state, announced addresses and answers.
"""

import ipaddress

import attr

from idetcd.config import ip_addresses, number, text
from idetcd.etcd import (
    Credentials,
    TlsSettings,
    read_credentials,
    read_endpoints,
    read_tls,
)
from idetcd.names import Pattern, PatternError


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


def _addresses(args):
    addresses = ip_addresses("address", args)
    for written in addresses:
        address = ipaddress.ip_address(written)
        if address.is_unspecified or address.is_multicast:
            raise ValueError(f"address {written} cannot be announced: other nodes cannot reach it")
    return addresses


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


# directive: (IdetcdSettings field, fewest arguments, most (None: any), convert)
_SETTINGS = {
    "address": ("addresses", 1, None, _addresses),
    "credentials": ("credentials", 2, 3, read_credentials),
    "endpoint": ("endpoints", 1, None, read_endpoints),
    "lease": ("lease", 1, 1, number("lease", 2, 3600, " of seconds")),
    "limit": ("limit", 1, 1, number("limit", 1, 50000)),
    "nameservers": ("nameservers", 1, 1, number("nameservers", 1, 13)),
    "node": ("node", 1, 1, text("node", "a name without spaces", spaces=False)),
    "pattern": ("pattern", 1, 1, lambda args: Pattern.parse(args[0])),
    "prefix": ("prefix", 1, 1, _prefix),
    "srv": ("srv", 1, 1, number("srv", 1, 65535)),
    "stale": ("stale", 1, 1, number("stale", 0, 259200, " of seconds")),
    "state": ("state", 1, 1, text("state", "a directory", spaces=True)),
    "tls": ("tls", 0, 3, read_tls),
    "ttl": ("ttl", 1, 1, number("ttl", 0, 86400, " of seconds")),
    "wait": ("wait", 0, 0, lambda args: True),
}


def _within(zone, parent):
    return parent == "." or zone == parent or zone.endswith("." + parent)


def read_idetcd(directive, zones):
    """
    The settings of an C{idetcd} block in a server block of C{zones}.
    """
    directive.arguments(0, 0, block=True)
    if directive.block is None:
        directive.fail(
            directive.line,
            "idetcd needs a block with at least a pattern:"
            " idetcd { pattern worker{{.ID}}.tf.local. }",
        )
    seen, values = directive.settings(_SETTINGS)
    if "pattern" not in values:
        directive.fail(
            directive.line,
            "idetcd needs a pattern, such as: pattern worker{{.ID}}.tf.local.",
        )
    settings = IdetcdSettings(filename=directive.filename, line=directive.line, **values)
    pattern = settings.pattern
    try:
        pattern.check(settings.limit)
    except PatternError as e:
        directive.fail(seen["pattern"], str(e))
    if settings.tls is not None and not any(url.startswith("https://") for url in settings.endpoints):
        directive.fail(
            seen["tls"],
            "tls is for https:// endpoints, and this idetcd block has none:"
            " list etcd as https://HOST:PORT in 'endpoint'",
        )
    if not any(_within(pattern.zone, zone) for zone in zones):
        directive.fail(
            seen["pattern"],
            f"pattern {pattern.text!r} lies outside this block's zones"
            f" ({', '.join(zones)}): its names are in {pattern.zone}",
        )
    return settings
