#!/bin/bash
# hvadam: a Ray cluster by hand (without SLURM), then a campaign on it.
#
#   on the head node:      studies/cluster/ray-cluster.sh head
#   on every other node:   studies/cluster/ray-cluster.sh worker HEAD_IP
#   then, on the head:     studies/cluster/ray-cluster.sh tune SPEC
#   at the end, anywhere:  studies/cluster/ray-cluster.sh stop
#
# Every node needs the same Python environment with hvadam installed (pip install 'hvadam[all]'),
# and the data the campaign's workload reads. The campaign database URL comes from the
# environment (never from the command line, where `ps` shows it to every user):
#   export HVADAM_STORAGE='postgresql+psycopg://USER:PASSWORD@HOST:5432/DBNAME'
# For Population Based Training across nodes, export HVADAM_RAY_STORAGE=/a/shared/directory.
set -euo pipefail

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
PORT="${HVADAM_RAY_PORT:-6379}"

case "${1:-}" in
    head)
        ray start --head --port="${PORT}" --include-dashboard=false
        ;;
    worker)
        ray start --address="${2:?usage: ray-cluster.sh worker HEAD_IP}:${PORT}"
        ;;
    tune)
        : "${HVADAM_STORAGE:?set HVADAM_STORAGE to the campaign database URL}"
        shift
        hvadam tune "${1:?usage: ray-cluster.sh tune SPEC}" --backend ray --address auto "${@:2}"
        ;;
    stop)
        ray stop
        ;;
    *)
        echo "usage: ray-cluster.sh head | worker HEAD_IP | tune SPEC [hvadam tune options] | stop" >&2
        exit 2
        ;;
esac
