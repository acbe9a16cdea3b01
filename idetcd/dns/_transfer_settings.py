"""
The C{transfer} directive of a server block, read: who may transfer the
node's zone, and who is sent NOTIFY when it changes.
"""

import ipaddress

import attr

from idetcd.config import DEFAULT_PORT, CorefileError
from idetcd.names import absolute


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


def read_transfer(directive):
    """
    C{transfer [ZONE…] { to ADDRESS… }}: (the zones it names, the
    settings); C{to} may come more than once.
    """
    args = directive.arguments(0, None, block=True)
    allowed, targets = [], []
    for setting in directive.block or ():
        if setting.name != "to":
            setting.fail(setting.line, f"unknown directive {setting.name!r} in transfer (expected: to)")
        for text in setting.arguments(1, None):
            network, target = setting.convert(lambda: _transfer_address(text))
            if network not in allowed:
                allowed.append(network)
            if target is not None and target not in targets:
                targets.append(target)
    if not allowed:
        directive.fail(
            directive.line,
            "transfer needs a block naming who may transfer the zone, such as:"
            " transfer { to 10.0.0.1 }",
        )
    zones = tuple(absolute(zone) for zone in args)
    return zones, TransferSettings(tuple(allowed), tuple(targets), directive.filename, directive.line)


def transfer_for_zone(transfer, zone):
    """
    The settings of a C{transfer} read by L{read_transfer}, once the zones
    it names are known to be C{zone}, the zone of the pattern: the only
    zone it transfers.
    """
    zones, settings = transfer
    for other in zones:
        if other.lower() != zone.lower():
            raise CorefileError(
                settings.filename,
                settings.line,
                f"transfer can only transfer the zone of the pattern, {zone}, not {other}",
            )
    return settings
