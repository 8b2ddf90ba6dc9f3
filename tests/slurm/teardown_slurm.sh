#!/usr/bin/env bash
# Stop the single-node SLURM started by tests/slurm/setup_slurm.sh (slurmd, slurmctld, slurmdbd,
# mariadbd, munged, in that order), by their PID files, and remove stale PID files.
#   --purge  also apt-get purge the packages and delete the configs, spool, accounting database
#            and fake GPU devices, returning the machine to its state before the setup.
set -euo pipefail

MARKER_DIR=${HESSVALLEY_SLURM_MARKER_DIR:-/tmp/hessvalley-slurm}
START_NS=$(date +%s%N)
say() { echo "[teardown_slurm] $*"; }

[ "$(id -u)" -eq 0 ] || { say "skipped: not root"; exit 0; }

stop_pidfile() {
    local pidfile=$1 name=$2
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        local pid
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
            say "killed $name (pid $pid) after 15 s"
        else
            say "stopped $name (pid $pid)"
        fi
    fi
    rm -f "$pidfile"
}

stop_pidfile /run/slurmd.pid slurmd
stop_pidfile /run/slurmctld.pid slurmctld
stop_pidfile /run/slurmdbd.pid slurmdbd
stop_pidfile /run/mysqld/mysqld.pid mariadbd
stop_pidfile /run/munge/munged.pid munged
rm -f "$MARKER_DIR/ready"

if [ "${1:-}" = "--purge" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get purge -y -qq munge slurmctld slurmd slurm-client slurmdbd mariadb-server \
        >/dev/null 2>&1 || say "apt-get purge reported an error"
    apt-get autoremove --purge -y -qq >/dev/null 2>&1 || true
    rm -rf /etc/slurm /var/lib/slurm /var/log/slurm /var/lib/mysql /etc/munge \
        /dev/hessvalley-fakegpu /run/munge /run/mysqld
    say "purged packages, configs, spool, accounting DB and fake GPU devices"
fi
say "done in $((($(date +%s%N) - START_NS) / 1000000)) ms"
