#!/bin/sh
# Start this node's task of a TensorFlow MultiWorkerMirroredStrategy job once
# every worker is up.
#
# Run on each worker node, after its idetcd node holds a name (the systemd
# unit examples/tensorflow/trainer.service orders it after idetcd.service).
# The task index is the idetcd slot - 1: worker1 is the chief (index 0),
# and a node restarted with its state directory gets its index back.
set -eu

: "${WORKERS:=3}"
: "${IDETCD:=idetcd}"
: "${IDETCD_NODE:=--corefile /etc/idetcd/Corefile --state /var/lib/idetcd}"
: "${PYTHON:=python3}"

$IDETCD wait "$WORKERS" --role worker --timeout "${WAIT_TIMEOUT:-600}" $IDETCD_NODE >/dev/null
# {"cluster": {"worker": ["worker1.tf.local:2222", ...]}, "task": {"type": "worker", "index": N}}
TF_CONFIG="$($IDETCD env --format tf-config $IDETCD_NODE)"
export TF_CONFIG

exec "$PYTHON" "$(dirname "$0")/train_mwms.py" "$@"
