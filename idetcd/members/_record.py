"""
What a claimed name stores in etcd, and how it is read back.

The value keeps the 2018 Go plugin's shape, ``{"ipv4": "...", "ipv6": "...",
"port": "..."}``, so both can share one etcd during a migration.  The
additions are ignored by the original: a list where a node has several
addresses of one family; ``node``, the identity of the node holding the
name; ``role`` and ``slot``, from the pattern that named it; and ``srv``,
the port the job's processes listen on.  A value without role and slot
(written by the original plugin) gets them from its name.
"""

import ipaddress
import json
import re

import attr


def _addresses(value, version, field):
    if value in (None, ""):
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{field} must be a string or a list of strings")
    out = []
    for item in items:
        address = ipaddress.ip_address(item)
        if address.version != version:
            raise ValueError(f"{field} holds {item!r}, not an IPv{version} address")
        out.append(address.compressed)
    return tuple(out)


_SLOT_IN_LABEL = re.compile(r"(\d+)")


def role_and_slot(name):
    """
    The role and slot a name of the original plugin's kind spells, for a
    value that does not say: the first run of digits in the first label is
    the slot, the rest of that label the role (``worker12`` is worker 12).
    """
    label = name.partition(".")[0]
    match = _SLOT_IN_LABEL.search(label)
    if match is None:
        return label, 0
    role = (label[: match.start()] + label[match.end() :]).strip("-_") or "node"
    return role, int(match.group(1))


def _integer(data, field, low, high):
    value = data.get(field, 0)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not (value == 0 or low <= value <= high):
        raise ValueError(f"{field} must be an integer from {low} to {high}")
    return value


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Member:
    """
    One claimed name and the addresses it answers with.

    ``name`` is absolute and lower case (``worker1.tf.local.``).  ``lease``
    is the etcd lease the key lives on (0 for none): not part of the value,
    it is what tells the name's owner from a node that merely shares its
    identity.  ``role`` and ``slot`` say which pattern named it and with
    which ID; ``srv`` is the port for its SRV records (0: none).
    """

    name: str
    ipv4: tuple = ()
    ipv6: tuple = ()
    port: str = ""
    node: str = ""
    lease: int = 0
    role: str = ""
    slot: int = 0
    srv: int = 0

    @classmethod
    def from_value(cls, name, value, lease=0):
        """
        Read a member from an etcd value; L{ValueError} says what is wrong.
        """
        try:
            data = json.loads(value)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        port = data.get("port", "")
        if isinstance(port, int) and not isinstance(port, bool):
            port = str(port)
        if not isinstance(port, str):
            raise ValueError("port must be a string")
        node = data.get("node", "")
        if not isinstance(node, str):
            raise ValueError("node must be a string")
        role = data.get("role", "")
        if not isinstance(role, str):
            raise ValueError("role must be a string")
        slot = _integer(data, "slot", 1, 2**31 - 1)
        if not (role and slot):
            role, slot = role_and_slot(name)
        member = cls(
            name=name,
            ipv4=_addresses(data.get("ipv4"), 4, "ipv4"),
            ipv6=_addresses(data.get("ipv6"), 6, "ipv6"),
            port=port,
            node=node,
            lease=lease,
            role=role,
            slot=slot,
            srv=_integer(data, "srv", 1, 65535),
        )
        if not (member.ipv4 or member.ipv6):
            raise ValueError("no address in ipv4 or ipv6")
        return member

    def to_value(self):
        """
        The etcd value for this member, readable by the original plugin.
        """

        def one_or_list(addresses):
            return addresses[0] if len(addresses) == 1 else list(addresses) or ""

        value = {
            "ipv4": one_or_list(self.ipv4),
            "ipv6": one_or_list(self.ipv6),
            "port": self.port,
            "node": self.node,
        }
        if self.role and self.slot:
            value.update(role=self.role, slot=self.slot)
        if self.srv:
            value["srv"] = self.srv
        return json.dumps(value, separators=(",", ":")).encode("utf-8")

def member_order(member):
    """
    How members are listed everywhere: by role, then slot.
    """
    return member.role, member.slot, member.name
