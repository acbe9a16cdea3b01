"""
One real etcd shared by every test of a class, for tests that need no
isolation beyond a key prefix of their own: started at the first test that
asks for it, ended when the test process exits.

trial checks after each test that the reactor holds no process, so this
etcd is a plain child process (C{subprocess}), which trial leaves alone;
it still dies with the test process (the same shim as the node's embedded
etcd asks the kernel for that).
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import attr
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from idetcd.etcd import EtcdClient
from idetcd.node._embedded import _SHIM, EtcdProcess, EtcdStartFailed

_running = {}


@attr.s(eq=False)
class SharedEtcd:
    """
    A running etcd: its client URL, and clients of it.
    """

    binary = attr.ib()
    client_url = attr.ib()
    process = attr.ib(repr=False)
    data_dir = attr.ib()

    def make_client(self, **kwargs):
        return EtcdClient([self.client_url], reactor, **kwargs)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@defer.inlineCallbacks
def shared_etcd(binary, extra_args=()):
    """
    The etcd of C{binary} started with C{extra_args} for this test process,
    started now if it is not running yet.
    """
    key = (binary, tuple(extra_args))
    etcd = _running.get(key)
    if etcd is not None and etcd.process.poll() is None:
        return etcd
    for attempt in range(3):
        etcd = _start(binary, extra_args)
        try:
            yield _healthy(etcd)
        except EtcdStartFailed:
            etcd.stop()
            if attempt == 2:
                raise
        else:
            break
    _running[key] = etcd
    atexit.register(etcd.stop)
    return etcd


def _start(binary, extra_args):
    data_dir = tempfile.mkdtemp(prefix="idetcd-shared-etcd-")
    member = EtcdProcess(reactor, data_dir, binary=binary)
    args = [sys.executable, "-c", _SHIM, str(os.getpid())] + member._args() + list(extra_args)
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return SharedEtcd(binary, member.client_url, process, data_dir)


@defer.inlineCallbacks
def _healthy(etcd, timeout=30.0, step=0.05):
    client = etcd.make_client(timeout=1.0)
    try:
        for _ in range(int(timeout / step)):
            if etcd.process.poll() is not None:
                raise EtcdStartFailed(f"etcd ({etcd.binary}) exited at start with status {etcd.process.returncode}")
            healthy = yield client.healthy()
            if healthy:
                return
            yield deferLater(reactor, step, lambda: None)
        raise EtcdStartFailed(f"etcd ({etcd.binary}) not healthy after {timeout}s")
    finally:
        yield client.close()
