"""
Which network interface carries an address of this machine: what gloo and
NCCL need (C{GLOO_SOCKET_IFNAME}, C{NCCL_SOCKET_IFNAME}) to advertise the
node's announced address instead of whatever the machine's hostname
resolves to, which on stock hosts and in containers is loopback.
"""

import fcntl
import ipaddress
import socket
import struct

#: ioctl(2) request for an interface's (primary) IPv4 address, from
#: <linux/sockios.h>.
_SIOCGIFADDR = 0x8915


def _ipv4_of(name):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("256s", name.encode("utf-8")[:15])
        try:
            reply = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)
        except OSError:
            return None  # no IPv4 address
    return socket.inet_ntoa(reply[20:24])


def _ipv6_interfaces():
    """
    {address: interface} for every IPv6 address, from /proc/net/if_inet6.
    """
    found = {}
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) == 6:
                    found[ipaddress.IPv6Address(int(fields[0], 16)).compressed] = fields[5]
    except OSError:
        pass
    return found


def interface_of(address):
    """
    The name of the interface holding C{address} (IPv4 or IPv6) on this
    machine, or C{None} if none does (or the system does not say: this
    looks on Linux).
    """
    parsed = ipaddress.ip_address(address)
    if parsed.version == 6:
        return _ipv6_interfaces().get(parsed.compressed)
    for _, name in socket.if_nameindex():
        if _ipv4_of(name) == parsed.compressed:
            return name
    return None
