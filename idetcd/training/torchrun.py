"""
A torchrun rendezvous backend on idetcd's rounds::

    torchrun --rdzv-backend idetcd --rdzv-id JOB --nnodes MIN:MAX \\
        --rdzv-endpoint /etc/idetcd/Corefile --rdzv-conf state=/var/lib/idetcd ...

torchrun finds it through the entry-point group C{torchrun.handlers}
(L{idetcd.training.launcher.torchrun_handlers}).  The
ranks are the round's (lowest slot first); the rank-0 node's agent hosts
the job's C{TCPStore} at its announced address, on the C{port} of
C{--rdzv-conf} or else the master's C{srv} port, and for each round a
fresh one for the workers (torch's C{use_agent_store}).  This module is
the only one that imports torch: idetcd does not depend on it.
"""

import datetime
import logging
import os
import time

import attr
from torch.distributed import PrefixStore, TCPStore
from torch.distributed.elastic.rendezvous import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousStoreInfo,
    RendezvousTimeoutError,
)

from idetcd.cli import EXIT_ETCD, EXIT_TIMEOUT
from idetcd.training.launcher import Idetcd, IdetcdError, RoundWatch, nodes_waiting

log = logging.getLogger(__name__)

#: What torch raises for the idetcd command's exit statuses; others are
#: plain RendezvousErrors.
_ERRORS = {EXIT_ETCD: RendezvousConnectionError, EXIT_TIMEOUT: RendezvousTimeoutError}

#: The store key that closes the job, outside every round's prefix.
CLOSED = "idetcd/closed"

#: In a round's prefix: how many of its members have come to its store.
ARRIVED = "idetcd/arrived"

#: In a round's prefix: the port of the round's store for the workers.
WORKERS_PORT = "idetcd/workers_port"

#: How long a round's members have to come to its store before this node
#: asks idetcd whether the round still stands: a member that died just
#: before the round was agreed is in it until its lease is overdue.
ARRIVAL = 5.0


def _torch_error(e):
    return _ERRORS.get(e.status, RendezvousError)(e.message)


def _corefile(params):
    """
    The Corefile: the endpoint, or the C{corefile} key; both must agree.
    """
    endpoint, key = params.endpoint.strip() or None, params.get("corefile")
    if endpoint and key and endpoint != key:
        raise ValueError(f"--rdzv-endpoint {endpoint} and --rdzv-conf corefile={key} name two Corefiles")
    return endpoint or key


@attr.s(eq=False)
class IdetcdRendezvousHandler(RendezvousHandler):
    """
    Rendezvous as a job's round: the first from C{idetcd env}, each next
    one with C{--after} the last (which leaves out dead members).
    """

    idetcd = attr.ib()
    run_id = attr.ib()
    min_nodes = attr.ib()
    max_nodes = attr.ib()
    timeout = attr.ib()
    port = attr.ib(default=None)
    settle = attr.ib(default=None)
    watch_interval = attr.ib(default=5.0)
    _round = attr.ib(default=None, init=False)
    _store = attr.ib(default=None, init=False)  # (the TCPStore, (address, port, hosting))
    _workers_store = attr.ib(default=None, init=False)  # the round's, while this node is rank 0
    _arrived_in = attr.ib(default=None, init=False)  # the round this node was counted in
    _closed = attr.ib(default=False, init=False)
    _watch = attr.ib(default=None, init=False)

    def __attrs_post_init__(self):
        self._watch = RoundWatch(self.idetcd, self.run_id, self.watch_interval)

    @classmethod
    def from_parameters(cls, params):
        return cls(
            Idetcd(_corefile(params), params.get("state")),
            params.run_id,
            params.min_nodes,
            params.max_nodes,
            params.get_as_int("timeout", 900),
            params.get_as_int("port"),
            params.get("settle"),
            float(params.get("watch_interval", 5.0)),
        )

    def get_backend(self):
        return "idetcd"

    def get_run_id(self):
        return self.run_id

    @property
    def use_agent_store(self):
        return True

    def next_rendezvous(self):
        if self._closed:
            raise RendezvousClosedError(f"the rendezvous of job {self.run_id} is closed")
        deadline = time.monotonic() + self.timeout
        after = self._round.number if self._round else None
        while True:
            agreed = self._agree(deadline, after)
            port = self.port or agreed.master_port
            if port is None:
                raise RendezvousError(
                    f"idetcd: no port for job {self.run_id}'s store: give its members an srv port, "
                    "or --rdzv-conf port=N"
                )
            missing = self._arrive(agreed, port)
            if missing is None:
                break
            if time.monotonic() >= deadline:
                raise RendezvousTimeoutError(
                    f"idetcd: timed out after {self.timeout}s: round {agreed.number} of job {self.run_id}: {missing}"
                )
            latest = self._call(self.idetcd.latest, self.run_id)
            # Ask again: idetcd gives the same round while it stands, and
            # the next one once it ended (a member in it died).
            ended = latest.number > agreed.number or not latest.alive
            after = agreed.number if ended else agreed.number - 1
        store = self._store[0]
        if store.check([CLOSED]):
            raise RendezvousClosedError(f"the rendezvous of job {self.run_id} is closed")
        self._round = agreed
        # For the workers: which round they run in; and the interface of the
        # announced address for gloo and NCCL, which otherwise pick the
        # address of the host name, loopback on many systems.
        os.environ.update(IDETCD_JOB=self.run_id, IDETCD_ROUND=str(agreed.number))
        if agreed.interface:
            for variable in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
                os.environ.setdefault(variable, agreed.interface)
        log.info(
            "idetcd: job %s: round %d, %s is rank %d of %d",
            self.run_id, agreed.number, agreed.name, agreed.rank, agreed.world_size,
        )
        round_store = self._round_store(agreed)
        return RendezvousInfo(
            round_store,
            agreed.rank,
            agreed.world_size,
            RendezvousStoreInfo(agreed.master_address, int(round_store.get(WORKERS_PORT))),
        )

    def _call(self, command, *args):
        try:
            return command(*args)
        except IdetcdError as e:
            raise _torch_error(e) from None

    def _agree(self, deadline, after):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RendezvousTimeoutError(f"idetcd: timed out after {self.timeout}s: job {self.run_id}")
        return self._call(self.idetcd.join, self.run_id, (self.min_nodes, self.max_nodes), left, after, self.settle)

    def _round_store(self, agreed):
        return PrefixStore(f"idetcd/{self.run_id}/{agreed.number}", self._store[0])

    def _arrive(self, agreed, port):
        """
        Count this node in at the round's store, and wait up to L{ARRIVAL}
        seconds for all its members; C{None} once they are all there, else
        what is missing.
        """
        try:
            store = self._round_store_at(agreed, port)
            if self._arrived_in != agreed.number:
                self._host_workers_store(agreed, store)
                store.add(ARRIVED, 1)
                self._arrived_in = agreed.number
            until = time.monotonic() + ARRIVAL
            while (count := store.add(ARRIVED, 0)) < agreed.world_size:
                if time.monotonic() >= until:
                    return f"{count} of its {agreed.world_size} members arrived"
                time.sleep(0.1)
            return None
        except RuntimeError as e:  # torch's DistError: no store there (yet)
            self._store = None
            return f"no store at {agreed.master_address}:{port}: {e}"

    def _round_store_at(self, agreed, port):
        """
        The round's store, in the job's store at the master: hosted here
        if this node is rank 0, and kept from round to round while the
        master stays the same.
        """
        where = (agreed.master_address, port, agreed.rank == 0)
        if self._store is None or self._store[1] != where:
            self._store = None  # a server this node hosted closes now
            store = TCPStore(
                agreed.master_address,
                port,
                is_master=agreed.rank == 0,
                timeout=datetime.timedelta(seconds=ARRIVAL),
                wait_for_workers=False,
            )
            store.set_timeout(datetime.timedelta(seconds=self.timeout))
            self._store = (store, where)
        return self._round_store(agreed)

    def _host_workers_store(self, agreed, store):
        """
        On the rank-0 node, start the round's store for the workers, on a
        port of the system's choosing, and tell the others its port in
        C{store}, the round's, before counting this node in.  Workers keep
        their keys in the store with no prefix of their own (gloo's each
        rank's address, for one): a store they shared with the workers of
        an earlier round would hand them the addresses of workers gone.
        """
        self._workers_store = None  # the last round's closes now
        if agreed.rank == 0:
            self._workers_store = TCPStore(
                agreed.master_address,
                0,
                is_master=True,
                timeout=datetime.timedelta(seconds=self.timeout),
                wait_for_workers=False,
            )
            store.set(WORKERS_PORT, str(self._workers_store.port))

    def is_closed(self):
        if self._closed or self._store is None:
            return self._closed
        try:
            return self._store[0].check([CLOSED])
        except RuntimeError as e:
            raise RendezvousConnectionError(f"idetcd: job {self.run_id}: store: {e}") from None

    def set_closed(self):
        self._closed = True
        if self._store is not None:
            try:
                self._store[0].set(CLOSED, "1")
            except RuntimeError as e:
                raise RendezvousConnectionError(f"idetcd: job {self.run_id}: store: {e}") from None

    def num_nodes_waiting(self):
        if self._round is None:
            return 0
        return nodes_waiting(self._watch.poll(), self._round, self.max_nodes)

    def shutdown(self):
        """
        Close the rendezvous, as torch's own backends do when their agent
        is done: nodes that come later are not admitted.
        """
        self._watch.stop()
        try:
            self.set_closed()
        except RendezvousError as e:
            log.warning("idetcd: job %s: could not close the rendezvous: %s", self.run_id, e)
            return False
        return True

