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

# gloo tells its peers the address of this machine's hostname, which is
# loopback on stock Debian/Ubuntu and in containers: the other ranks then
# fail with "Connection refused, remote=[127.0.0.1]:…" and rank 0 waits for
# ever.  Have it use the interface of the address this node announces
# (unless GLOO_SOCKET_IFNAME is set; set but empty is gloo's own choice).
if [ -z "${GLOO_SOCKET_IFNAME+set}" ]; then
    address=$($IDETCD env --format json $IDETCD_NODE | python3 -c '
import json, sys
spec = json.load(sys.stdin)
print(next(m for m in spec["cluster"][spec["role"]] if m["name"] == spec["name"])["addresses"][0])')
    GLOO_SOCKET_IFNAME=$(ip -o addr show to "$address" | awk '{ print $2; exit }')
    export GLOO_SOCKET_IFNAME
fi

exec torchrun \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
    --nproc_per_node="${NPROC_PER_NODE:-1}" \
    "$(dirname "$0")/train_ddp.py" "$@"
