"""
The C{log} and C{errors} directives of a server block, read: which
queries the query log writes and how (CoreDNS's C{log}), and how the
error log sums up SERVFAIL answers (CoreDNS's C{errors}).
"""

import re

import attr

from idetcd.config import duration, number
from idetcd.names import absolute, name_problem

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
    seconds = duration("consolidate's period", args[0])
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


#: The settings of a C{log} or C{errors} block both take.
_LIMIT = ("limit", 1, 1, number("limit", 1, 100000, " of lines per second"))


def read_log(directive):
    """
    C{log [NAMES...] [FORMAT] [{ class CLASSES... / limit N }]}.
    """
    directive.arguments(0, None, block=True)
    _, values = directive.settings({"class": ("classes", 1, None, _log_classes), "limit": _LIMIT})
    args = list(directive.args)
    log_format = COMMON_LOG_FORMAT
    if args and "{" in args[-1]:
        log_format = directive.convert(lambda: _log_format(args.pop()))
    names = directive.convert(lambda: _log_names(args))
    return QueryLogSettings(names, log_format, filename=directive.filename, line=directive.line, **values)


def read_errors(directive):
    """
    C{errors [{ consolidate DURATION REGEXP [LEVEL]... / limit N }]}.
    """
    directive.arguments(0, 0, block=True)
    _, values = directive.settings(
        {"consolidate": ("consolidate", 2, 3, _consolidate), "limit": _LIMIT}, repeated=("consolidate",)
    )
    return ErrorsSettings(filename=directive.filename, line=directive.line, **values)
