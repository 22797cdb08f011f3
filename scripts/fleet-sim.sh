#!/usr/bin/env bash
# The fleet simulation (docs/fleet.md): NODES nodes cold-start one model through a site cache
# (SeaweedFS with the origin's bucket remote-mounted), on one machine: network namespaces, a
# bridge, and our own shaping proxy in front of the origin (this kernel has no netem).
#
#   sudo scripts/fleet-sim.sh                      # 16 nodes, 1 GiB model (about 13 minutes)
#   sudo NODES=4 MODEL_MB=64 scripts/fleet-sim.sh  # the CI size (1 to 3 minutes)
#   sudo MODEL_MB=64 UPLINK_MBIT=5 scripts/fleet-sim.sh  # docs/fleet.md's figures: the network,
#       not two CPU cores, bounds a node's cold start (about 22 minutes)
#
# Environment: NODES (16), MODEL_MB (1024), RTT_MS (40), UPLINK_MBIT (200, shared by all),
# BASELINE (auto: also N nodes from the origin alone when that takes under ~3 minutes; on; off),
# FLEET_JSON (also write the results there), FLEET_KEEP (a directory: keep the logs and data
# there), FLEET_TIMEOUT (seconds, 3600: the driver is
# stopped past it), MODELFS_PYTHON (an interpreter that has modelfs's dependencies; default:
# scripts/setup.sh, then .venv). This checkout's src/ is the modelfs it runs. Prints one table.
# Cleans up namespaces, mounts, processes and its work directory on any exit, also after a
# driver killed by SIGKILL (the namespaces are named after this script's pid).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "fleet-sim: run as root (network namespaces, FUSE)" >&2; exit 2; }
if [ -n "${MODELFS_PYTHON:-}" ]; then
    PY=$MODELFS_PYTHON
else
    scripts/setup.sh
    PY="${MODELFS_VENV:-$PWD/.venv}/bin/python"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's modelfs
WORKDIR="${FLEET_KEEP:-/tmp/modelfs-fleet-sim-$$}"
driver=""

cleanup() {
    trap - EXIT INT TERM
    if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
        kill -TERM "$driver" 2>/dev/null || true
        wait "$driver" 2>/dev/null || true
    fi
    # What a driver killed by SIGKILL could not undo: its namespaces (and what runs in them;
    # each node's mount lives in its own mount namespace and goes with its processes).
    if [ -n "$driver" ]; then
        for ns in $(ip netns list | awk '{print $1}' | grep "^mfleet$$-" | sort -r); do
            for pid in $(ip netns pids "$ns"); do kill -KILL "$pid" 2>/dev/null || true; done
            ip netns del "$ns" 2>/dev/null || true
        done
    fi
    [ -n "${FLEET_KEEP:-}" ] || rm -rf "$WORKDIR"
}
trap cleanup EXIT INT TERM

args=(--nodes "${NODES:-16}" --model-mb "${MODEL_MB:-1024}" --rtt-ms "${RTT_MS:-40}"
      --uplink-mbit "${UPLINK_MBIT:-200}" --baseline "${BASELINE:-auto}" --workdir "$WORKDIR"
      --run-id "$$")
[ -n "${FLEET_JSON:-}" ] && args+=(--json "$FLEET_JSON")
[ -n "${FLEET_KEEP:-}" ] && args+=(--keep)
timeout --kill-after=60 "${FLEET_TIMEOUT:-3600}" "$PY" bench/fleet.py "${args[@]}" &
driver=$!
status=0
wait "$driver" || status=$?
exit "$status"
