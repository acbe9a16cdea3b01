"""
A node's place in its training job, in the forms the frameworks read:
TensorFlow's ``TF_CONFIG``, ``torchrun``'s rank variables, an MPI or
DeepSpeed hostfile.

Frameworks need dense ranks (0 to N-1), where slots may have gaps (a node
that left for good): a node's rank is its position among its role's members
present, lowest slot first.  With every slot from 1 to N held, which is
what ``idetcd wait N`` makes sure of, that is exactly SLOT-1; and since a
restarted node takes its slot back, it keeps its rank.
"""

import json
import shlex

import attr

from idetcd.members import member_order


class SpecError(Exception):
    """
    The members present do not make a cluster spec; the message says why.
    """



def host(member):
    """
    The name frameworks connect to: without the trailing dot.
    """
    return member.name.rstrip(".")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Local:
    """
    What this node's own launcher needs about its own address: the address
    it announced, and the interface holding it (C{None} if not found).
    """

    address: str
    interface: "str | None" = None


@attr.s(frozen=True)
class ClusterSpec:
    """
    Every role's members, lowest slot first, and this node's member; for a
    spec of an agreed round, its job and number; C{local}, a L{Local}.
    """

    roles = attr.ib()  # {role: (Member, ...)}
    member = attr.ib()
    job = attr.ib(default=None)
    round = attr.ib(default=None)
    local = attr.ib(default=None)

    @classmethod
    def of(cls, members, name, **kwargs):
        """
        The spec for the node holding C{name} among C{members} (L{Member}s
        of one zone); C{kwargs} sets C{job}, C{round} and C{local}.
        """
        roles = {}
        own = None
        for member in sorted(members, key=member_order):
            roles.setdefault(member.role, []).append(member)
            if member.name == name:
                own = member
        if own is None:
            raise SpecError(f"{name} is not among the members")
        return cls({role: tuple(listed) for role, listed in roles.items()}, own, **kwargs)

    @property
    def peers(self):
        """
        The members of this node's role, lowest slot first.
        """
        return self.roles[self.member.role]

    @property
    def index(self):
        """
        This node's rank within its role: its position among the peers.
        """
        return self.peers.index(self.member)

    def tf_config(self):
        """
        TensorFlow's C{TF_CONFIG}: every role's C{host:port}, and this task.
        """
        cluster = {role: [_address(m) for m in members] for role, members in self.roles.items()}
        config = {"cluster": cluster, "task": {"type": self.member.role, "index": self.index}}
        # TensorFlow reads only cluster, task, rpc_layer and environment.
        return {**config, **self._round()}

    def torchrun(self):
        """
        C{torchrun}'s rendezvous settings: the master is the peer with the
        lowest slot.  With C{local}, the address for C{torchrun
        --local-addr} and the interface gloo and NCCL must use.
        """
        master = self.peers[0]
        settings = {f"IDETCD_{key.upper()}": value for key, value in self._round().items()}
        settings.update(
            NODE_RANK=self.index,
            NNODES=len(self.peers),
            MASTER_ADDR=host(master),
            MASTER_PORT=_srv(master),
        )
        if self.local is not None:
            settings["LOCAL_ADDR"] = self.local.address
            if self.local.interface:
                settings["GLOO_SOCKET_IFNAME"] = settings["NCCL_SOCKET_IFNAME"] = self.local.interface
        return settings

    def hostfile(self, slots=1, mpich=False, addresses=False):
        """
        An MPI/DeepSpeed hostfile: one line per peer, C{name slots=K} (Open
        MPI, DeepSpeed) or C{name:K} (MPICH's Hydra); with C{addresses},
        each peer's first address instead of its name.
        """
        form = "{}:{}\n" if mpich else "{} slots={}\n"
        lines = [form.format((m.ipv4 + m.ipv6)[0] if addresses else host(m), slots) for m in self.peers]
        if self.round is not None:
            lines.insert(0, f"# idetcd job {self.job} round {self.round}\n")
        return "".join(lines)

    def as_json(self):
        """
        Everything above as plain data: this node, and every role's members.
        """
        return {
            **self._round(),
            "name": self.member.name,
            "role": self.member.role,
            "slot": self.member.slot,
            "index": self.index,
            "world_size": len(self.peers),
            "master": host(self.peers[0]),
            "master_port": self.peers[0].srv or None,
            "local_addr": self.local and self.local.address,
            "interface": self.local and self.local.interface,
            "members": [member_json(m) for m in self.peers],
            "cluster": {
                role: [member_json(m) for m in members] for role, members in self.roles.items()
            },
        }

    def _round(self):
        return {} if self.round is None else {"job": self.job, "round": self.round}

    def render(self, form, slots=1, addresses=False):
        """
        The text C{idetcd env --format FORM} prints.
        """
        if form == "tf-config":
            return json.dumps(self.tf_config(), separators=(",", ":")) + "\n"
        if form == "torchrun":
            return "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in self.torchrun().items())
        if form in ("hostfile", "hostfile-mpich"):
            return self.hostfile(slots, mpich=form == "hostfile-mpich", addresses=addresses)
        if form == "json":
            return json.dumps(self.as_json(), indent=2) + "\n"
        raise ValueError(f"unknown format {form!r}")


#: The formats of L{ClusterSpec.render}.
FORMATS = ("tf-config", "torchrun", "hostfile", "hostfile-mpich", "json")


def member_json(member):
    """
    A member as plain data, as C{idetcd members --json} and C{env} show it.
    """
    return {
        "name": member.name,
        "role": member.role,
        "slot": member.slot,
        "addresses": list(member.ipv4 + member.ipv6),
        "port": member.port,
        "srv": member.srv or None,
        "node": member.node,
        "lease": f"{member.lease:x}" if member.lease else None,
    }


def _srv(member):
    if not member.srv:
        raise SpecError(
            f"{member.name} has no srv port: set 'srv PORT' in the idetcd block of its Corefile"
        )
    return member.srv


def _address(member):
    return f"{host(member)}:{_srv(member)}"
