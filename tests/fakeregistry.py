"""
The registry a zone authority reads, in memory, and a few members for it:
for tests of the DNS parts without etcd.
"""

from idetcd.members._record import Member


class FakeRegistry:
    """
    The registry's surface (members, revision, ready, subscribe,
    subscribe_changes), in memory.
    """

    def __init__(self, members=(), revision=1, ready=True):
        self.ready = ready
        self.members = {member.name: member for member in members}
        self.revision = revision
        self.subscribers = []
        self.change_subscribers = []

    def subscribe(self, callback):
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def subscribe_changes(self, callback):
        self.change_subscribers.append(callback)
        return lambda: self.change_subscribers.remove(callback)

    def put(self, member):
        self.members[member.name] = member
        self._changed({member.name})

    def delete(self, name):
        del self.members[name]
        self._changed({name})

    def _changed(self, names=()):
        self.revision += 1
        for callback in list(self.change_subscribers):
            callback(frozenset(names))
        for callback in list(self.subscribers):
            callback()


def sample_members():
    return [
        Member("worker1.tf.local.", ("10.0.0.1",), ("fd00::1",)),
        Member("worker2.tf.local.", ("10.0.0.2", "10.0.0.22")),
        Member("worker3.tf.local.", (), ("fd00::3",)),
        Member("worker1.elsewhere.", ("192.0.2.1",)),
    ]
