"""
What a node keeps between runs, in its state directory: its identity, the
name and lease it held last, and a lock so two live processes never share
them.
"""

import errno
import fcntl
import json
import os
import uuid

import attr

from idetcd.common import EXIT_TEMPFAIL


class StateDirectoryBusy(Exception):
    """
    Another running node uses this state directory (and so its identity).
    """

    exit_status = EXIT_TEMPFAIL


def default_state_dir(block, port):
    """
    Where a node keeps its identity and embedded etcd data by default: one
    directory per DNS port, so nodes sharing a machine stay distinct.
    """
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    zone = block.idetcd.pattern.zone.rstrip(".") or "root"
    return os.path.join(base, "idetcd", f"{zone}-{port}")


def state_path(block, port=None, state_dir=None):
    """
    The state directory of the node of C{block}, given the C{--port} and
    C{--state} it was started with, if any.
    """
    port = block.port if port is None else port
    return state_dir or block.idetcd.state or default_state_dir(block, port)


def _boot_id():
    """
    This kernel's boot, or C{None} where the system does not say.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


@attr.s(eq=False)
class NodeState:
    """
    The files a node keeps between runs: its identity, the name and lease it
    held last, and a lock so two live processes never share them.
    """

    path = attr.ib()
    _lock = attr.ib(default=None, init=False)

    def acquire(self):
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        lock = open(os.path.join(self.path, "lock"), "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            lock.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise StateDirectoryBusy(
                    f"state directory {self.path} is in use by another idetcd; "
                    "give each node on one machine its own 'state' directory"
                ) from None
            raise
        self._lock = lock

    def release(self):
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _read(self, filename):
        try:
            with open(os.path.join(self.path, filename)) as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    def _write(self, filename, text):
        target = os.path.join(self.path, filename)
        with open(target + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(target + ".tmp", target)

    def node_id(self):
        """
        This node's identity, made once and kept.
        """
        node = self._read("node-id")
        if node is None:
            node = uuid.uuid4().hex
            self._write("node-id", node)
        return node

    def replace_node_id(self, node):
        self._write("node-id", node)

    def existing_node_id(self):
        """
        This node's identity if it has one yet; never makes one.
        """
        return self._read("node-id")

    def remember_etcd_url(self, url):
        """
        Where the embedded etcd of the node running now listens, for the
        C{idetcd} command to find it.
        """
        self._write("etcd-url", url)

    def forget_etcd_url(self):
        try:
            os.remove(os.path.join(self.path, "etcd-url"))
        except FileNotFoundError:
            pass

    def etcd_url(self):
        return self._read("etcd-url")

    def last_name(self):
        return self._read("name")

    def _incarnation(self):
        """
        What tells this directory, on this boot, from a copy of it (a cloned
        machine image, a copied volume) or from a run before a reboot.
        """
        stat = os.stat(self.path)
        return {"boot": _boot_id(), "dir": [stat.st_dev, stat.st_ino]}

    def remember_claim(self, name, lease):
        self._write("name", name)
        self._write("lease", json.dumps({"lease": lease, **self._incarnation()}))

    def predecessor_lease(self):
        """
        The lease the previous process of this directory held, if that
        process provably ended: the lock is ours now, and the record was
        written on this boot, in this very directory (not in a copy).  A
        live process elsewhere that shares a copy of this directory proves
        nothing, so its lease is never returned.
        """
        try:
            record = json.loads(self._read("lease") or "null")
            incarnation = self._incarnation()
        except (ValueError, OSError):
            return None
        if (
            self._lock is None
            or not isinstance(record, dict)
            or incarnation["boot"] is None
            or any(record.get(k) != v for k, v in incarnation.items())
            or not isinstance(record.get("lease"), int)
        ):
            return None
        return record["lease"]
