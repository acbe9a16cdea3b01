"""
C{idetcd check}: a Corefile read and every node of it built as ``twistd
idetcd`` builds them, through the same code, but not started: no port is
bound and etcd is not asked.  What the node would refuse at start-up is
the same one line here, with the same exit status.
"""

from twisted.internet import reactor

from idetcd.node import build_nodes, idetcd_blocks


def _summary(node):
    """
    One line for a node that would start: where it answers, for which
    names, from which etcd, and what else it serves.
    """
    block, settings = node.block, node.settings
    etcd = " ".join(settings.endpoints)
    parts = [
        f"{block.filename}:{block.line}: {', '.join(block.zones)} on DNS port {node.dns.port}"
        f" of {' '.join(node.dns.interfaces)}",
        f"names {settings.pattern.text} (limit {settings.limit}) in etcd {etcd}"
        f" under {settings.prefix or '(no prefix)'}",
    ]
    forwarder = node.dns.forwarder
    if forwarder is not None:
        parts.append("forward to " + " ".join(map(str, forwarder.upstreams)))
    for endpoint in ("health", "ready", "prometheus"):
        address = getattr(block, endpoint)
        if address is not None:
            parts.append(f"{endpoint} on {address}")
    return "; ".join(parts)


def check(corefile, port, state, out):
    """
    Check the Corefile at C{corefile} with C{--port} and C{--state}
    (C{port}, C{state}; C{None} when not given) as ``twistd idetcd``
    would, and write a line for each node it would run to C{out}; raises
    L{Unusable} with the node's line and exit status.
    """
    nodes = build_nodes(idetcd_blocks(corefile, port, state), reactor, port, state)
    for node in nodes:
        out.write(_summary(node) + "\n")
    out.write(f"{corefile}: ready to run {len(nodes)} node{'s' if len(nodes) > 1 else ''}\n")
