"""
The values Corefile directives take, as every part's readers check them:
whole numbers and seconds within bounds, Go durations, one of some words,
text, IP addresses, zones.  Each converter raises L{ValueError} with the
message a reader turns into a L{CorefileError} at the directive's line
(L{Directive.convert}).
"""

import ipaddress
import re

from idetcd.names import absolute, name_problem


def number(name, low, high, unit=""):
    """
    A converter of a directive's first argument into a whole number from
    C{low} to C{high}; C{name} and C{unit} say what it counts.
    """

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


def seconds(name, low, high):
    """
    A converter of a first argument into seconds, written as a decimal
    number (C{0.5}), from C{low} to C{high}.
    """

    def convert(args):
        text = args[0]
        if not (re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3})?", text) and low <= float(text) <= high):
            raise ValueError(f"{name} must be a number of seconds from {low} to {high}, got {text!r}")
        return float(text)

    return convert


_DURATION = re.compile(r"(?:[0-9]{1,6}(?:\.[0-9]{1,3})?(?:h|ms|m|s))+")
_DURATION_PART = re.compile(r"([0-9.]+)(h|ms|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def duration(name, text):
    """
    Seconds in a Go duration such as C{30s}, C{1m30s} or C{500ms}, as
    CoreDNS's directives take them.
    """
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{name} must be a duration such as 30s, 1m or 1m30s, got {text!r}")
    return sum(float(amount) * _UNITS[unit] for amount, unit in _DURATION_PART.findall(text))


def duration_between(name, low, high):
    """
    A converter of a first argument into the seconds of a L{duration},
    from C{low} to C{high}.
    """

    def convert(args):
        value = duration(name, args[0])
        if not low <= value <= high:
            raise ValueError(f"{name} must be from {low:g}s to {high:g}s, got {args[0]!r}")
        return value

    return convert


def choice(name, choices):
    """
    A converter of a first argument that must be one of C{choices}.
    """

    def convert(args):
        if args[0] not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {args[0]!r}")
        return args[0]

    return convert


def text(name, what, spaces):
    """
    A converter of a first argument into printable text, not blank, and
    without white space unless C{spaces}; C{what} says what it names.
    """

    def convert(args):
        word = args[0]
        if not (word.isprintable() and word.strip()) or (
            not spaces and any(c.isspace() for c in word)
        ):
            raise ValueError(f"{name} must be {what}, got {word!r}")
        return word

    return convert


def ip_addresses(directive, args, known=()):
    """
    The addresses C{known}, then each IP address in C{args}, compressed,
    none twice.
    """
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


def zone(directive, text):
    """
    The absolute name of the zone C{text}, which C{directive} takes.
    """
    name = absolute(text)
    problem = name != "." and name_problem(name)
    if problem:
        raise ValueError(f"{directive} takes zones, and {text!r} is not one: {name!r} {problem}")
    return name
