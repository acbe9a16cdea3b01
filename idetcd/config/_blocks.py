"""
Server blocks, read as CoreDNS reads them: the keys (zones and a port)
here, each directive by the reader its part registered for its name.
"""

import os

import attr

from idetcd.config._corefile import CorefileError, _Failing, _Lexer, _Parser
from idetcd.names import absolute, name_problem

#: The DNS port of a server block whose keys name none.
DEFAULT_PORT = 53


@attr.s(auto_attribs=True)
class Block:
    """
    A server block as its directives are read: its zones and port, where
    its keys stand, and by directive name what each reader made of it
    (C{values}) and the line the directive first stands on (C{lines}).
    """

    zones: tuple
    port: int
    filename: str
    line: int
    values: dict = attr.Factory(dict)
    lines: dict = attr.Factory(dict)

    def once(self, directive):
        """
        Fail unless C{directive} is the first of its name in this block.
        """
        # A copy: server_blocks notes each directive's line once it is read.
        directive.once(dict(self.lines), "this server block")


def server_blocks(text, filename, readers, environ=None):
    """
    Yield each server block of the Corefile C{text} as a L{Block}, once
    its directives are read: each by C{readers[name](directive, block)},
    whose value replaces C{block.values[name]} (a reader of a directive
    that may come again can build on the value before it).  A directive
    without a reader is refused, naming the C{readers} in their order.
    """
    if environ is None:
        environ = os.environ
    tokens = _Lexer(text, filename, environ).tokens()
    if not tokens:
        raise CorefileError(filename, 1, "no server block: the Corefile is empty (see Corefile.sample)")
    last_line = text.count("\n") + (not text.endswith("\n"))
    for keys, body in _Parser(tokens, filename, last_line).server_blocks():
        zones, port = _Keys(filename).keys(keys)
        block = Block(zones, port, filename, keys[0].line)
        for directive in body:
            reader = readers.get(directive.name)
            if reader is None:
                directive.fail(
                    directive.line,
                    f"unknown directive {directive.name!r} (expected one of: {', '.join(readers)})",
                )
            block.values[directive.name] = reader(directive, block)
            block.lines.setdefault(directive.name, directive.line)
        yield block


class _Keys(_Failing):
    """
    Read the keys of a server block: zones, each maybe with a port.
    """

    def __init__(self, filename):
        self.filename = filename

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
