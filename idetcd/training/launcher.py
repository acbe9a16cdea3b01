"""
A job's rounds as a launcher sees them: torch's and TensorFlow's processes
run their node's C{idetcd} command and read its JSON, rather than talk to
etcd, so they need no reactor and no etcd settings of their own.

Nothing here imports a framework: L{idetcd.training.torchrun} and
L{idetcd.training.tensorflow} are the frameworks' faces of it.
"""

import json
import logging
import re
import subprocess
import sys
import tempfile
import time

import attr

from idetcd.cli import EXIT_SPARE, EXIT_TIMEOUT

#: The idetcd command, with the Python this process runs on.
IDETCD = (sys.executable, "-m", "idetcd.cli")

log = logging.getLogger(__name__)


class IdetcdError(Exception):
    """
    The idetcd command failed: C{message} is its one-line error, C{status}
    its exit status (as the README lists them).
    """

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class NotInRound(IdetcdError):
    """
    This node is a spare: round C{round} was agreed without it (C{None}
    if the command did not say which).
    """

    def __init__(self, status, message):
        super().__init__(status, message)
        found = re.search(r"\bround (\d+)", message)
        self.round = int(found.group(1)) if found else None


def nnodes_text(nnodes):
    """
    C{--nnodes} as idetcd reads it, from C{N}, C{"N"}, C{"MIN:MAX"} or
    C{(MIN, MAX)}.
    """
    if isinstance(nnodes, tuple):
        nnodes = "%d:%d" % nnodes
    text = str(nnodes)
    if not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", text):
        raise ValueError(f"nnodes must be N or MIN:MAX, got {nnodes!r}")
    return text


def _loads(text, what):
    try:
        return json.loads(text)
    except ValueError:
        raise IdetcdError(1, f"idetcd {what} printed no JSON: {text[:200]!r}") from None


@attr.s(frozen=True)
class Seat:
    """
    A member's seat in an agreed round of a job, as C{idetcd env --format
    json} prints it for that member: the round, and this node's rank in it.
    """

    job = attr.ib()
    number = attr.ib()
    name = attr.ib()
    role = attr.ib()
    rank = attr.ib()
    world_size = attr.ib()
    master = attr.ib()
    master_port = attr.ib()
    local_addr = attr.ib()
    interface = attr.ib()
    members = attr.ib()
    cluster = attr.ib()

    @classmethod
    def from_json(cls, text):
        data = _loads(text, "env")
        try:
            return cls(
                data["job"], data["round"], data["name"], data["role"], data["index"], data["world_size"],
                data["master"], data["master_port"], data["local_addr"], data["interface"],
                data["members"], data["cluster"],
            )
        except (KeyError, TypeError) as e:
            raise IdetcdError(1, f"idetcd env printed JSON without {e}") from None

    @property
    def master_address(self):
        """
        The rank-0 member's first announced address: reachable without the
        machine's resolver knowing the zone.
        """
        return self.members[0]["addresses"][0]


@attr.s(frozen=True)
class LatestRound:
    """
    The latest recorded round of a job, as C{idetcd round --json} prints it:
    C{number} 0 before the first.
    """

    job = attr.ib()
    number = attr.ib()
    members = attr.ib()
    alive = attr.ib()
    waiting = attr.ib()

    @classmethod
    def from_json(cls, text):
        data = _loads(text, "round")
        try:
            return cls(data["job"], data["round"], data["members"], data["alive"], data["waiting"])
        except (KeyError, TypeError) as e:
            raise IdetcdError(1, f"idetcd round printed JSON without {e}") from None


def nodes_waiting(latest, current, max_nodes):
    """
    How many nodes torch should re-rendezvous for, seen from round
    C{current} (a L{Seat}) when C{latest} (a L{LatestRound}, or C{None})
    is the latest one read: any, if the others moved on to a newer round or
    a member died; else the live members left out, while there is room.
    """
    if latest is None or latest.number < current.number:
        return 0  # nothing read since this round was agreed
    if latest.number > current.number or not latest.alive:
        return max(1, len(latest.waiting))
    return min(len(latest.waiting), max_nodes - current.world_size)


@attr.s(frozen=True)
class Idetcd:
    """
    The idetcd command of one node: its Corefile and state directory
    (C{None}: the command's defaults).
    """

    corefile = attr.ib(default=None)
    state = attr.ib(default=None)
    program = attr.ib(default=IDETCD)

    def argv(self, command, *args):
        argv = [*self.program, command, *args]
        for option, value in (("--corefile", self.corefile), ("--state", self.state)):
            if value:
                argv += [option, value]
        return argv

    def env_argv(self, job, nnodes, timeout=None, after=None, settle=None):
        args = ["--format", "json", "--nnodes", nnodes_text(nnodes)]
        if job is not None:
            args += ["--job", job]
        if timeout is not None:
            args += ["--timeout", "%.1f" % max(timeout, 0.1)]
        if after is not None:
            args += ["--after", str(after)]
        if settle is not None:
            args += ["--settle", str(settle)]
        return self.argv("env", *args)

    def round_argv(self, job):
        return self.argv("round", "--job", job, "--json")

    def env(self, job, nnodes, timeout=None, after=None, settle=None):
        """
        Block until the job's next round (after round C{after}) is agreed,
        and return it (a L{Seat}); L{NotInRound} if it left this node out.
        """
        return Seat.from_json(_run(self.env_argv(job, nnodes, timeout, after, settle)))

    def latest(self, job):
        """
        The job's latest recorded round, at once (a L{LatestRound}).
        """
        return LatestRound.from_json(_run(self.round_argv(job)))

    def join(self, job, nnodes, timeout, after=None, settle=None, interval=1.0):
        """
        The next round with this node in it, after round C{after}: a spare
        waits for a newer round (the members agree on one when they next
        re-rendezvous) until C{timeout} seconds have passed.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.env(job, nnodes, deadline - time.monotonic(), after, settle)
            except NotInRound as e:
                after = e.round if e.round is not None else self.latest(job).number
                log.info("idetcd: job %s: a spare, not in round %d: waiting for a newer round", job, after)
            while self.latest(job).number <= after:
                if time.monotonic() + interval > deadline:
                    raise IdetcdError(
                        EXIT_TIMEOUT,
                        f"idetcd: timed out after {timeout:g}s: this node is a spare,"
                        f" not in round {after} of job {job}",
                    )
                time.sleep(interval)


def _failure(status, stderr):
    lines = stderr.strip().splitlines()
    message = lines[-1] if lines else f"idetcd exited with status {status}"
    return (NotInRound if status == EXIT_SPARE else IdetcdError)(status, message)


def _run(argv):
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise _failure(done.returncode, done.stderr)
    return done.stdout


@attr.s(eq=False)
class RoundWatch:
    """
    A job's latest round, read in the background at most every C{interval}
    seconds: torch's agent asks ten times a second and must not wait.
    """

    idetcd = attr.ib()
    job = attr.ib()
    interval = attr.ib(default=5.0)
    clock = attr.ib(default=time.monotonic)
    latest = attr.ib(default=None, init=False)
    _process = attr.ib(default=None, init=False)
    _started = attr.ib(default=None, init=False)

    def poll(self):
        """
        The latest round read so far (C{None} before the first), starting
        a new read when one is due.
        """
        if self._process is not None and self._process.poll() is not None:
            self._finish()
        if self._process is None and (self._started is None or self.clock() - self._started >= self.interval):
            self._started = self.clock()
            # Files, not pipes: a large job's JSON would fill a pipe nobody reads yet.
            out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
            self._process = subprocess.Popen(self.idetcd.round_argv(self.job), stdout=out, stderr=err)
            self._process.out, self._process.err = out, err
        return self.latest

    def _finish(self):
        process, self._process = self._process, None
        with process.out, process.err:
            process.out.seek(0)
            process.err.seek(0)
            out, err = process.out.read().decode(), process.err.read().decode()
        try:
            if process.returncode != 0:
                raise _failure(process.returncode, err)
            self.latest = LatestRound.from_json(out)
        except IdetcdError as e:
            log.warning("idetcd: job %s: could not read the latest round: %s", self.job, e.message)

    def stop(self):
        """
        End a read in progress.
        """
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
            process.out.close()
            process.err.close()


def torchrun_handlers():
    """
    The object of the C{torchrun.handlers} entry point: torch calls it for
    the creator of C{--rdzv-backend idetcd}'s handlers.  It is here, not in
    L{idetcd.training.torchrun}: torch calls it while it imports the very
    modules that one imports.
    """

    def create(params):
        from idetcd.training.torchrun import IdetcdRendezvousHandler

        return IdetcdRendezvousHandler.from_parameters(params)

    return create
