#!/bin/sh
# Start this node's part of a PyTorch DDP job once WORKERS workers are up.
#
# Run on each worker node, after its idetcd node holds a name (the systemd
# unit examples/pytorch/trainer.service orders it after idetcd.service).
# Every node that asks gets the same agreed round of the job from etcd:
# ranks by slot, worker1 rank 0 and the master while it is alive.  A node
# beyond the WORKERS of the round is a spare: idetcd says so and this
# script ends with its exit status 6.
set -eu

# The workers the job needs, and where this node's idetcd keeps its
# Corefile and state (contrib/systemd/idetcd.service's paths).
: "${WORKERS:=3}"
: "${JOB:=ddp}"
: "${IDETCD:=idetcd}"
: "${IDETCD_NODE:=--corefile /etc/idetcd/Corefile --state /var/lib/idetcd}"

# The barrier and this node's place: NODE_RANK, NNODES, MASTER_ADDR,
# MASTER_PORT (the 'srv' port of the master), LOCAL_ADDR (the address this
# node announces) and GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME (its
# interface).  Exported: without GLOO_SOCKET_IFNAME gloo tells its peers
# the address of the machine's hostname, loopback on stock Debian/Ubuntu
# and in containers, and every rank but 0 fails with "Connection refused,
# remote=[127.0.0.1]:…" while rank 0 waits.
spec=$($IDETCD env --format torchrun --nnodes "$WORKERS" --job "$JOB" --timeout "${WAIT_TIMEOUT:-600}" $IDETCD_NODE)
set -a
eval "$spec"
set +a

exec torchrun \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --local-addr="$LOCAL_ADDR" \
    --nproc_per_node="${NPROC_PER_NODE:-1}" \
    "$(dirname "$0")/train_ddp.py" "$@"
