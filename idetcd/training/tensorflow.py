"""
A TensorFlow cluster resolver on idetcd's rounds::

    resolver = IdetcdClusterResolver(3, job="mnist", corefile="/etc/idetcd/Corefile")
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)

It waits for the job's round as C{idetcd env --nnodes} does and gives the
same cluster as C{idetcd env --format tf-config}: each member's name and
C{srv} port.  This module is the only one that imports TensorFlow: idetcd
does not depend on it.
"""

import tensorflow as tf

from idetcd.training.launcher import Idetcd


class IdetcdClusterResolver(tf.distribute.cluster_resolver.ClusterResolver):
    """
    The round agreed for C{job} with C{nnodes} (C{N} or C{"MIN:MAX"})
    members, read once, when made.  A spare gets
    L{idetcd.training.launcher.NotInRound}; other failures
    L{idetcd.training.launcher.IdetcdError}, with idetcd's one-line error.
    """

    def __init__(self, nnodes, job=None, corefile=None, state=None, timeout=None, rpc_layer="grpc"):
        self.round = Idetcd(corefile, state).env(job, nnodes, timeout)
        self.task_type = self.round.role
        self.task_id = self.round.rank
        self.rpc_layer = rpc_layer

    def cluster_spec(self):
        return tf.train.ClusterSpec({
            role: [f"{member['name'].rstrip('.')}:{member['srv']}" for member in members]
            for role, members in self.round.cluster.items()
        })

    def master(self, task_type=None, task_id=None, rpc_layer=None):
        """
        This task's address (or C{task_type}'s C{task_id}), with the RPC
        layer in front: C{grpc://worker1.tf.local:2222}.
        """
        address = self.cluster_spec().task_address(
            self.task_type if task_type is None else task_type, self.task_id if task_id is None else task_id
        )
        layer = self.rpc_layer if rpc_layer is None else rpc_layer
        return f"{layer}://{address}" if layer else address
