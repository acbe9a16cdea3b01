"""
Members for tests: the key prefix and name pattern the claim tests use, a
node's identity, a member's value as etcd stores it, and members by the
thousand (worker{index}'s address, all of them written to a real etcd a
transaction of 128 at a time).
"""

from twisted.internet import defer

from idetcd.etcd import b64_text
from idetcd.members._record import Member
from idetcd.names._pattern import Pattern

PREFIX = b"/idetcd/"
PATTERN = Pattern.parse("worker{{.ID}}.tf.local.")


def identity(node, address="127.0.0.1"):
    return Member(name="", ipv4=(address,), port="53", node=node)


def value(ipv4="10.0.0.1", ipv6="", node="n"):
    return Member(name="", ipv4=(ipv4,) if ipv4 else (), ipv6=(ipv6,) if ipv6 else (), node=node).to_value()


#: etcd's default --max-txn-ops.
TXN_OPS = 128


def address(index, generation=0):
    return f"10.{generation}.{index >> 8}.{index & 255}"


def plain_member(index):
    return Member("", (address(index),))


@defer.inlineCallbacks
def write_members(client, prefix, count, parallel=4, member=plain_member):
    """
    Put worker1 … worker{count} under C{prefix}, 128 to a transaction; the
    value of worker{index} is C{member(index)}'s.
    """

    def txn(start):
        puts = [
            {
                "request_put": {
                    "key": b64_text(prefix + f"worker{index}.tf.local.".encode()),
                    "value": b64_text(member(index).to_value()),
                }
            }
            for index in range(start, min(start + TXN_OPS, count + 1))
        ]
        return client.call("/v3/kv/txn", {"success": puts})

    limit = defer.DeferredSemaphore(parallel)
    yield defer.gatherResults(
        [limit.run(txn, start) for start in range(1, count + 1, TXN_OPS)], consumeErrors=True
    )
