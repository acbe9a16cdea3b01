"""
The query log and the error log, as CoreDNS's C{log} and C{errors}
plugins write them: one line per answered query (of the names and classes
asked for, in CoreDNS's placeholders) and one per SERVFAIL.

Each writes at most its C{limit} of lines per second; the lines held back
are counted in one line per second, so a flood costs a bounded amount of
disk.  The DNS server calls L{QueryLog} only when the Corefile has C{log}
or C{errors}: without them the fast path does not change.
"""

import re
import struct

import attr
from twisted.logger import Logger, LogLevel
from twisted.names import dns

from idetcd.common import LinesPerSecond
from idetcd.dns import _tally as tally
from idetcd.dns import _wire as wire
from idetcd.dns._log_settings import LOG_PLACEHOLDER

querylog = Logger(namespace="idetcd.dns.querylog")
errorlog = Logger(namespace="idetcd.dns.errors")

_FLAG_NAMES = (
    (wire.QR, "qr"), (wire.AA, "aa"), (wire.TC, "tc"), (wire.RD, "rd"), (0x0080, "ra"),
    (0x0040, "z"), (0x0020, "ad"), (wire.CD, "cd"),
)
_LEVELS = {"error": LogLevel.error, "warning": LogLevel.warn, "info": LogLevel.info, "debug": LogLevel.debug}
#: The Extended DNS Errors (RFC 8914) this server gives, as a SERVFAIL's reason.
_EDE_REASONS = {3: "stale answer", 22: "no reachable authority"}
# An OPT record ending the message with one Extended DNS Error and nothing
# else, as this server writes it: its RDLENGTH, the option code and length.
_EDE_TAIL = struct.pack("!HHH", 6, wire.EDE, 2)
_SHORT = struct.Struct("!H")
SERVFAIL = dns.ESERVER


def twisted_format(text):
    """
    A CoreDNS log format as a twisted.logger format: placeholders become
    fields (C{{>id}} is C{{id}}), other braces are kept as text.
    """
    out = []
    last = 0
    for match in LOG_PLACEHOLDER.finditer(text):
        out.append(text[last : match.start()].replace("{", "{{").replace("}", "}}"))
        out.append("{" + match.group(1).lstrip(">") + "}")
        last = match.end()
    out.append(text[last:].replace("{", "{{").replace("}", "}}"))
    return "".join(out)


def response_class(reply):
    """
    CoreDNS's class of a reply: success, denial (NXDOMAIN, or NOERROR with
    no answer: NODATA) or error.
    """
    rcode = reply[3] & 0xF
    if rcode == dns.OK:
        return "success" if reply[6:8] != b"\x00\x00" else "denial"
    return "denial" if rcode == dns.ENAME else "error"


def _within(name, names):
    return any(scope == "." or name == scope or name.endswith("." + scope) for scope in names)


def _read(data):
    """
    The query in C{data}, or None when it cannot be read.
    """
    try:
        return wire.read_query(data)
    except (wire.FormatError, struct.error):
        return None


def _name(query):
    """
    The question's name, lower case, with a trailing dot ("." for a query
    that could not be read).
    """
    if query is None:
        return "."
    return "".join(label.decode("ascii", "replace").lower() + "." for label in query.labels) or "."


def fields(data, reply, peer, proto, seconds, query=None):
    """
    CoreDNS's placeholders for the query C{data} (read: C{query}, if
    already) answered with C{reply} (C{>} dropped from their names): the
    question, EDNS and sizes of the query, and the code, flags and size of
    the reply.
    """
    if query is None:
        query = _read(data)
    (flags,) = _SHORT.unpack_from(reply, 2)
    values = {
        "remote": peer[0],
        "port": peer[1],
        "id": _SHORT.unpack_from(data)[0] if len(data) >= 2 else 0,
        "type": "-",
        "class": "-",
        "name": _name(query),
        "proto": proto,
        "size": len(data),
        "do": "false",
        "bufsize": wire.MIN_PAYLOAD,
        "rcode": tally.RCODES.get(flags & 0xF, str(flags & 0xF)),
        "rflags": ",".join(name for bit, name in _FLAG_NAMES if flags & bit),
        "rsize": len(reply),
        "duration": f"{seconds:.6f}s",
        "opcode": (_SHORT.unpack_from(data, 2)[0] & wire.OPCODE) >> 11 if len(data) >= 4 else 0,
    }
    if query is None:
        return values
    values["type"] = dns.QUERY_TYPES.get(query.type) or dns.EXT_QUERIES.get(query.type) or f"TYPE{query.type}"
    values["class"] = dns.QUERY_CLASSES.get(query.cls, f"CLASS{query.cls}")
    if query.edns is not None:
        values["do"] = "true" if query.edns.dnssec_ok else "false"
        values["bufsize"] = query.edns.payload
    return values


def servfail_reason(reply):
    """
    Why a SERVFAIL was given, from its Extended DNS Error.
    """
    if reply[-8:-2] == _EDE_TAIL:
        (code,) = _SHORT.unpack_from(reply, len(reply) - 2)
        return _EDE_REASONS.get(code, f"extended DNS error {code}")
    return "server failure"


@attr.s(eq=False)
class _Rule:
    """
    One C{log} directive, with its rate limit.
    """

    settings = attr.ib()
    limit = attr.ib()
    format = attr.ib()


@attr.s(eq=False)
class _Consolidated:
    """
    A C{consolidate} of C{errors}: the count of errors matching C{pattern}
    in the current period.
    """

    seconds = attr.ib()
    pattern = attr.ib()
    level = attr.ib()
    count = attr.ib(default=0)
    timer = attr.ib(default=None)


@attr.s(eq=False)
class QueryLog:
    """
    Writes the lines of a server block's C{log} directives (a tuple of
    L{idetcd.dns.QueryLogSettings}) and of its C{errors} (an
    L{idetcd.dns.ErrorsSettings}, or None).  Call it with each query
    and its reply; L{stop} ends its timers and says what it held back.
    """

    clock = attr.ib()
    log_settings = attr.ib(default=())
    errors_settings = attr.ib(default=None)
    _rules = attr.ib(init=False, factory=list)
    _errors_limit = attr.ib(init=False, default=None)
    _consolidated = attr.ib(init=False, factory=list)

    def __attrs_post_init__(self):
        for settings in self.log_settings:
            limit = LinesPerSecond(self.clock, settings.limit, self._held("query log"))
            self._rules.append(_Rule(settings, limit, twisted_format(settings.format)))
        if self.errors_settings is not None:
            self._errors_limit = LinesPerSecond(self.clock, self.errors_settings.limit, self._held("error log"))
            self._consolidated = [
                _Consolidated(seconds, re.compile(pattern), level)
                for seconds, pattern, level in self.errors_settings.consolidate
            ]

    @staticmethod
    def _held(what):
        def summarise(held, limit):
            querylog.warn(
                "{what}: {held} lines suppressed in the last second (at most {limit} lines/s)",
                what=what, held=held, limit=limit,
            )

        return summarise

    def __call__(self, data, reply, peer, proto, started):
        """
        Log the query C{data} from C{peer} (address, port) over C{proto}
        ("udp" or "tcp"), answered with C{reply}; C{started} is when it
        came, in L{tally.now} nanoseconds.
        """
        if self._rules:
            self._log_query(data, reply, peer, proto, started)
        if self._errors_limit is not None and reply[3] & 0xF == SERVFAIL:
            self._log_error(data, reply, peer)

    def _log_query(self, data, reply, peer, proto, started):
        query = name = None
        for rule in self._rules:
            settings = rule.settings
            if settings.names != (".",):
                # The query is read only for a rule that needs its name.
                if name is None:
                    query = _read(data)
                    name = _name(query)
                if not _within(name, settings.names):
                    continue
            # The first rule whose names match decides, as in CoreDNS.
            classes = settings.classes
            if ("all" in classes or response_class(reply) in classes) and rule.limit.allow():
                seconds = (tally.now() - started) / 1e9
                querylog.info(rule.format, **fields(data, reply, peer, proto, seconds, query))
            return

    def _log_error(self, data, reply, peer):
        # Without consolidate, a SERVFAIL past the limit is not even read.
        allowed = None if self._consolidated else self._errors_limit.allow()
        if allowed is False:
            return
        values = fields(data, reply, peer, "", 0.0)
        reason = servfail_reason(reply)
        text = f"{SERVFAIL} {values['name']} {values['type']}: {reason}"
        for consolidated in self._consolidated:
            if consolidated.pattern.search(text):
                consolidated.count += 1
                if consolidated.timer is None:
                    consolidated.timer = self.clock.callLater(consolidated.seconds, self._summarise, consolidated)
                return
        if allowed or self._errors_limit.allow():
            errorlog.error(
                "{rcode_number} {name} {type}: {reason} (from {remote}:{port})",
                rcode_number=SERVFAIL, reason=reason, **values,
            )

    def _summarise(self, consolidated):
        consolidated.timer = None
        count, consolidated.count = consolidated.count, 0
        errorlog.emit(
            _LEVELS[consolidated.level],
            "{count} errors like '{pattern}' occurred in last {seconds:g}s",
            count=count, pattern=consolidated.pattern.pattern, seconds=consolidated.seconds,
        )

    def stop(self):
        for rule in self._rules:
            rule.limit.stop()
        if self._errors_limit is not None:
            self._errors_limit.stop()
        for consolidated in self._consolidated:
            if consolidated.timer is not None:
                consolidated.timer.cancel()
                self._summarise(consolidated)


def query_log(block, clock):
    """
    The L{QueryLog} of the server block C{block}, or None when it has
    neither C{log} nor C{errors}.
    """
    if not block.log and block.errors is None:
        return None
    return QueryLog(clock, block.log, block.errors)
