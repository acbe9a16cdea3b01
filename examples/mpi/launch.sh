#!/bin/sh
# Start an Open MPI job across WORKERS nodes once they are up.
#
# Run on each worker node, after its idetcd node holds a name, like the
# other examples.  Every node gets the same agreed round of the job from
# etcd; the node of rank 0 (worker1 while it is alive) runs mpirun with the
# round's hostfile, which starts the processes of every node (over ssh by
# default); the others have nothing more to do.  A node beyond the WORKERS
# of the round is a spare: exit status 6.
#
#   launch.sh PROGRAM [ARGS...]    e.g. launch.sh hostname -I
set -eu

: "${WORKERS:=3}"
: "${JOB:=mpi}"
: "${IDETCD:=idetcd}"
: "${IDETCD_NODE:=--corefile /etc/idetcd/Corefile --state /var/lib/idetcd}"

round() { $IDETCD env --nnodes "$WORKERS" --job "$JOB" --timeout "${WAIT_TIMEOUT:-600}" $IDETCD_NODE "$@"; }
# The barrier and this node's rank, NODE_RANK (the torchrun format is the
# one in shell syntax).
spec=$(round --format torchrun)
eval "$spec"
[ "$NODE_RANK" = 0 ] || exit 0

hostfile=$(mktemp)
trap 'rm -f "$hostfile"' EXIT
# "worker1.tf.local slots=1" a line, the round's members by rank.
round --format hostfile >"$hostfile"
# Open MPI 4.1 drops the domain from host names (worker1.tf.local becomes
# worker1, which no one resolves) unless told to keep it.  MPIRUN_ARGS:
# more options, such as --mca plm_rsh_agent.
mpirun --hostfile "$hostfile" --mca orte_keep_fqdn_hostnames 1 ${MPIRUN_ARGS:-} "$@"
