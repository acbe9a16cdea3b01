#!/bin/sh
# Start this node's task of a TensorFlow MultiWorkerMirroredStrategy job once
# WORKERS workers are up.
#
# Run on each worker node, after its idetcd node holds a name (the systemd
# unit examples/tensorflow/trainer.service orders it after idetcd.service).
# Every node that asks gets the same agreed round of the job from etcd:
# task indexes by slot, worker1 the chief while it is alive.  A node beyond
# the WORKERS of the round is a spare: idetcd says so and this script ends
# with its exit status 6.
set -eu

: "${WORKERS:=3}"
: "${JOB:=mwms}"
: "${IDETCD:=idetcd}"
: "${IDETCD_NODE:=--corefile /etc/idetcd/Corefile --state /var/lib/idetcd}"
: "${PYTHON:=python3}"

# The barrier and this node's task:
# {"cluster": {"worker": ["worker1.tf.local:2222", ...]}, "task": {"type": "worker", "index": N}, ...}
TF_CONFIG=$($IDETCD env --format tf-config --nnodes "$WORKERS" --job "$JOB" --timeout "${WAIT_TIMEOUT:-600}" $IDETCD_NODE)
export TF_CONFIG

exec "$PYTHON" "$(dirname "$0")/train_mwms.py" "$@"
