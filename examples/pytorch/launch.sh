#!/bin/sh
# Start this node's part of a PyTorch DDP job once every worker is up.
#
# Run on each worker node, after its idetcd node holds a name (the systemd
# unit examples/pytorch/trainer.service orders it after idetcd.service).
# Ranks are idetcd slots: worker1 is rank 0 and the master, and a node
# restarted with its state directory gets its rank back.
set -eu

# The workers the job needs, and where this node's idetcd keeps its
# Corefile and state (contrib/systemd/idetcd.service's paths).
: "${WORKERS:=3}"
: "${IDETCD:=idetcd}"
: "${IDETCD_NODE:=--corefile /etc/idetcd/Corefile --state /var/lib/idetcd}"

# The barrier: returns once WORKERS workers hold names (exit 5 on timeout).
$IDETCD wait "$WORKERS" --role worker --timeout "${WAIT_TIMEOUT:-600}" $IDETCD_NODE >/dev/null
# NODE_RANK, NNODES, MASTER_ADDR, MASTER_PORT (the 'srv' port of worker1).
eval "$($IDETCD env --format torchrun $IDETCD_NODE)"

exec torchrun \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
    --nproc_per_node="${NPROC_PER_NODE:-1}" \
    "$(dirname "$0")/train_ddp.py" "$@"
