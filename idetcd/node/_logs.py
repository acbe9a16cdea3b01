"""
How ``twistd idetcd`` writes its log on standard output: twistd's text
lines, each with its syslog priority (C{<3>}) when journald reads them, or
one JSON object per line for log shippers.

twistd builds its log observer after the plugin's options are parsed and
before the service starts; an L{ILogObserver} component on the application
takes the place of the one it would make for standard output, so every
event is written once, by L{stdout_observer}.
"""

import json
import os
from datetime import datetime, timezone

from twisted.logger import (
    FileLogObserver,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
)

#: journald's priorities (syslog's) of twisted.logger's levels.
PRIORITIES = {
    LogLevel.critical: 2,
    LogLevel.error: 3,
    LogLevel.warn: 4,
    LogLevel.info: 6,
    LogLevel.debug: 7,
}
FORMATS = ("text", "json")
PRIORITY_CHOICES = ("auto", "yes", "no")


def is_journal(stream, environ=None):
    """
    Whether C{stream} is connected to the journal: C{$JOURNAL_STREAM}
    names its device and inode (systemd.exec(5)).
    """
    named = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = named.partition(":")
    try:
        status = os.fstat(stream.fileno())
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


def priority_prefix(level):
    """
    The C{<N>} that journald reads as a line's priority (info for an event
    without a level).
    """
    return f"<{PRIORITIES.get(level, 6)}>"


def _prefixed(text, level):
    """
    C{text} (lines ending in newlines) with the priority on every line, so
    a traceback's lines all keep the event's.
    """
    prefix = priority_prefix(level)
    return "".join(prefix + line for line in text.splitlines(keepends=True))


def _serialisable(value):
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def event_as_json(event):
    """
    One event as one line of JSON: C{time} (ISO 8601, UTC), C{level},
    C{namespace}, C{text} (the formatted message; with a C{traceback} for
    a failure) and the event's own fields that JSON can hold.
    """
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and _serialisable(value):
            record[key] = value
    return json.dumps(record, ensure_ascii=False) + "\n"


def stdout_observer(stream, log_format="text", priority="auto", environ=None):
    """
    The observer that writes events to C{stream} (standard output) in
    C{log_format}, with priority prefixes when C{priority} is C{"yes"}, or
    C{"auto"} and C{stream} is the journal.
    """
    prefixed = priority == "yes" or (priority == "auto" and is_journal(stream, environ))
    formatter = event_as_json if log_format == "json" else formatEventAsClassicLogText

    def format_event(event):
        text = formatter(event)
        return _prefixed(text, event.get("log_level")) if prefixed and text else text

    return FileLogObserver(stream, format_event)


def twistd_logs_to_stdout(twistd_options):
    """
    Whether twistd, with C{twistd_options}, would write its log to standard
    output (C{--nodaemon} without C{--logfile}, or C{--logfile -}; no
    C{--syslog} or C{--logger}).
    """
    if twistd_options.get("logger") or twistd_options.get("syslog"):
        return False
    logfile = twistd_options.get("logfile")
    return logfile == "-" or (bool(twistd_options.get("nodaemon")) and not logfile)
