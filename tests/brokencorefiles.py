"""
A corpus of broken Corefiles, each with the line its error names and a
fragment of the message: the mistakes an operator makes, in every part of
the file (lexer, server block, idetcd, forward, the HTTP endpoints, files
named by tls, credentials and forward).  Every one must stop a node before
it binds a port or asks etcd, with status 78; ``idetcd check`` must say
the same.
"""

import os

import attr

from tests.certs import make_certificates

#: An etcd URL nothing listens on: no case may get as far as asking it.
NOWHERE = "http://127.0.0.1:9"


@attr.s(frozen=True, auto_attribs=True)
class Broken:
    """
    A broken Corefile: its C{text}, the C{line} its error names (C{None}
    for an error about the whole file), and a C{fragment} of the message.
    """

    name: str
    text: str
    line: int
    fragment: str


def corefile(*idetcd_lines, server=(), keys=".:1053"):
    """
    One server block with C{keys}, the C{server} directives (from line 2),
    then an idetcd block holding C{idetcd_lines} (from line 3 +
    C{len(server)}).
    """
    body = "".join(f"    {line}\n" for line in server)
    inner = "".join(f"        {line}\n" for line in idetcd_lines)
    return f"{keys} {{\n{body}    idetcd {{\n{inner}    }}\n}}\n"


def node(*more, server=(), keys=".:1053"):
    """
    A block that would run but for C{more} (idetcd settings, from line
    5 + C{len(server)}) and C{server}.
    """
    return corefile(f"endpoint {NOWHERE}", "pattern worker{{.ID}}.tf.local.", *more, server=server, keys=keys)


def corpus(directory):
    """
    The broken Corefiles, with the files some of them name made (or left
    missing) in C{directory}.
    """
    os.makedirs(directory, exist_ok=True)
    certs = make_certificates(os.path.join(directory, "certs"))
    missing = os.path.join(directory, "missing")
    empty = os.path.join(directory, "empty-password")
    open(empty, "w").close()
    only_itself = os.path.join(directory, "resolv.conf")
    with open(only_itself, "w") as f:
        f.write("nameserver 127.0.0.1\n")
    secure = "endpoint https://127.0.0.1:9"
    return [
        Broken("limit zero", node("limit 0"), 5, "limit must be a whole number from 1 to 50000, got '0'"),
        Broken("limit words", node("limit many"), 5, "limit must be a whole number"),
        Broken("ttl too long", node("ttl 86401"), 5, "ttl must be a whole number of seconds from 0 to 86400"),
        Broken("lease too short", node("lease 1"), 5, "lease must be a whole number of seconds from 2 to 3600"),
        Broken("nameservers", node("nameservers 14"), 5, "nameservers must be a whole number from 1 to 13"),
        Broken("srv port", node("srv 65536"), 5, "srv must be a whole number from 1 to 65535"),
        Broken("stale", node("stale 259201"), 5, "stale must be a whole number of seconds from 0 to 259200"),
        Broken("typo", node("limt 3"), 5, "unknown directive 'limt' in idetcd"),
        Broken("twice", node("limit 3", "limit 4"), 6, "duplicate 'limit' in idetcd (first on line 5)"),
        Broken("no pattern", corefile(f"endpoint {NOWHERE}"), 2, "idetcd needs a pattern"),
        Broken("no ID", corefile("pattern worker.tf.local."), 3, "pattern 'worker.tf.local.' has no ID"),
        Broken(
            "outside the zones", corefile("pattern w{{.ID}}.tf.local.", keys="example.org:1053"), 3,
            "lies outside this block's zones",
        ),
        Broken("endpoint not a URL", corefile("pattern w{{.ID}}.tf.local.", "endpoint 127.0.0.1:2379"), 4, "is not an etcd URL"),
        Broken("endpoint path", corefile("pattern w{{.ID}}.tf.local.", "endpoint http://h:2379/v3"), 4, "must not have a path"),
        Broken("embedded and more", corefile("pattern w{{.ID}}.tf.local.", "endpoint embedded http://h:1"), 4, "cannot be listed with other endpoints"),
        Broken("address name", node("address eth0"), 5, "address takes IPv4 or IPv6 addresses, got 'eth0'"),
        Broken("address any", node("address 0.0.0.0"), 5, "0.0.0.0 cannot be announced"),
        Broken("prefix without slashes", node("prefix idetcd"), 5, "prefix must start and end with '/'"),
        Broken("prefix without the last slash", node("prefix /idetcd"), 5, "got '/idetcd'"),
        Broken("tls CA missing", corefile("pattern w{{.ID}}.tf.local.", secure, f"tls {missing}"), 5, f"cannot read the CA file {missing}"),
        Broken(
            "tls key of another certificate",
            corefile("pattern w{{.ID}}.tf.local.", secure, f"tls {certs.client_cert} {certs.server_key} {certs.ca}"), 5,
            "does not belong to the certificate",
        ),
        Broken("tls without https", node(f"tls {certs.ca}"), 5, "tls is for https:// endpoints"),
        Broken("password file missing", node(f"credentials idetcd file {missing}"), 5, f"cannot read the password file {missing}"),
        Broken("password file empty", node(f"credentials idetcd file {empty}"), 5, f"the password file {empty} is empty"),
        Broken("forward over TLS", node(server=["forward . tls://9.9.9.9"]), 2, "only plain DNS (dns://) is supported"),
        Broken("forward to a name", node(server=["forward . dns.google"]), 2, "the host must be an IP address"),
        Broken("forward policy", node(server=["forward . 10.0.0.1 {", "    policy fastest", "}"]), 3, "policy must be one of"),
        # Found when the node is built, before it binds: the files forward
        # names, and upstreams that are the node itself.
        Broken("forward file missing", node(server=[f"forward . {missing}"]), 2, f"forward cannot read {missing}"),
        Broken(
            "forward to itself", node(server=["bind 127.0.0.1", "forward . 127.0.0.1:1053"]), 3,
            "forward to 127.0.0.1:1053 would reach this server itself",
        ),
        Broken(
            "forward to none but itself", node(server=["bind 127.0.0.1", f"forward . {only_itself}"], keys=".:53"), 3,
            "forward has no upstream",
        ),
        Broken("health address", node(server=["health 8080"]), 2, "health takes an address such as :8080"),
        Broken(
            "health and ready on one port", node(server=["health 127.0.0.1:8080", "ready 127.0.0.1:8080"]), 3,
            "ready 127.0.0.1:8080 cannot listen: health on line 2 already uses port 8080",
        ),
        Broken("reload too often", node(server=["reload 1s"]), 2, "reload's interval must be at least 2s"),
        Broken("bind a name", node(server=["bind eth0"]), 2, "bind takes IPv4 or IPv6 addresses"),
        Broken("unknown server directive", node(server=["rewrite name a b"]), 2, "unknown directive 'rewrite'"),
        Broken("key port", node(keys=".:99999"), 1, "has a bad port '99999' (expected 0 to 65535)"),
        Broken("one zone twice", node() + node(), 7, "zone . on port 1053 is already served by the block on line 1"),
        Broken("unterminated quote", node('node "a'), 5, "unterminated quoted word"),
        Broken("environment", node("node {$IDETCD_TEST_UNSET_VARIABLE}"), 5, "environment variable IDETCD_TEST_UNSET_VARIABLE is not set"),
        Broken("missing brace", node()[: -len("}\n")], 5, "missing '}' at the end of the file to close the block opened on line 1"),
        Broken("empty", "# nothing yet\n", 1, "no server block: the Corefile is empty"),
        Broken("no idetcd block", ".:1053 {\n    bind 127.0.0.1\n}\n", None, "no server block has an idetcd directive"),
    ]
