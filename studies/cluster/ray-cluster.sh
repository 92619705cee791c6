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

# Ray's token authentication is on (a Ray cluster runs whatever code a client sends it): every
# node and the driver need the same token, in ~/.ray/auth_token (made on the head with
# `ray get-auth-token --generate` when missing; copy it to nodes without a shared home), or in
# RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH. Setting RAY_AUTH_MODE=disabled turns it off, which is
# safe only on a network no one else can reach.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
PORT="${HVADAM_RAY_PORT:-6379}"

case "${1:-}" in
    head)
        if [[ "${RAY_AUTH_MODE}" == "token" && -z "${RAY_AUTH_TOKEN:-}${RAY_AUTH_TOKEN_PATH:-}" ]]; then
            ray get-auth-token --generate >/dev/null
        fi
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
