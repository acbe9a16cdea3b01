"""
Why a node could not start, told the operator in one line, and the exit
status that tells a supervisor whether starting it again can help.

The statuses are those of C{sysexits.h} (L{idetcd.common}); each error an
operator can act on carries its own as its class's C{exit_status}.
"""

import errno
import os

from twisted.internet.error import CannotListenError

from idetcd.common import EXIT_CANTCREAT, EXIT_CONFIG, EXIT_NOPERM, EXIT_TEMPFAIL


def one_line(text):
    """
    C{text} with every run of white space, line ends included, made one
    space: a log line that stays one line.
    """
    return " ".join(str(text).split())


def explain(exception, listeners=(), state_dirs=()):
    """
    What to tell the operator about C{exception}, which stopped the start:
    C{(line, exit status)}, or C{None} when it is not one of the failures
    an operator can act on (a bug).

    An exception with an C{exit_status} attribute is such a failure, with
    that status and its message as the line: the errors carry their own
    statuses, and new kinds of failure need no change here.  C{listeners}
    maps port numbers to what listens there (C{"DNS"}); C{state_dirs} are
    the nodes' state directories.
    """
    if isinstance(exception, CannotListenError):
        return _cannot_listen(exception, dict(listeners))
    state_dir = _state_dir_of(exception, state_dirs)
    if state_dir is not None:
        return (
            f"cannot use the state directory {state_dir}: {exception.strerror} ({exception.filename});"
            " give one this user can write, with --state or 'state' in the Corefile",
            EXIT_CANTCREAT,
        )
    status = getattr(exception, "exit_status", None)
    if not isinstance(status, int):
        return None
    return one_line(exception), status


def _state_dir_of(exception, state_dirs):
    """
    The state directory in C{state_dirs} that C{exception}, an L{OSError}
    on a file in it (or on a parent it had to create), is about.
    """
    if not isinstance(exception, OSError) or not exception.filename:
        return None
    filename = os.path.abspath(os.fsdecode(exception.filename))
    for state_dir in state_dirs:
        state_dir = os.path.abspath(state_dir)
        if os.path.commonpath([filename, state_dir]) in (filename, state_dir):
            return state_dir
    return None


def _cannot_listen(exception, listeners):
    port = exception.port
    where = f"{exception.interface}:{port}" if exception.interface else f"port {port}"
    what = listeners.get(port)
    head = f"cannot listen for {what} on {where}" if what else f"cannot listen on {where}"
    code = getattr(exception.socketError, "errno", None)
    if code == errno.EACCES:
        return (
            f"{head}: not allowed; ports below 1024 need root or the"
            " CAP_NET_BIND_SERVICE capability (contrib/systemd/idetcd.service grants it)",
            EXIT_NOPERM,
        )
    if code == errno.EADDRNOTAVAIL:
        return (
            f"{head}: {exception.interface} is not an address of this"
            " machine; fix the Corefile",
            EXIT_CONFIG,
        )
    advice = "stop it, or give this node another port or address in the Corefile"
    if port == 53:
        advice += (
            " (on port 53 it is often systemd-resolved's stub on 127.0.0.53: 'bind' this node's own"
            " addresses, such as 127.0.0.1, instead of every address)"
        )
    reason = "another process listens there" if code == errno.EADDRINUSE else _strerror(exception)
    return f"{head}: {reason}; {advice}", EXIT_TEMPFAIL


def _strerror(exception):
    error = exception.socketError
    return one_line(getattr(error, "strerror", None) or error)
