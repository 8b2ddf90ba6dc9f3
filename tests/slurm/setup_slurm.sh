#!/usr/bin/env bash
# Bring up a real single-node SLURM on this machine for tests/test_slurm.py:
# munged, MariaDB + slurmdbd (accounting on, so `sacct` works as on real clusters),
# slurmctld and slurmd, with fake GPUs declared as GRES so GPU-requesting jobs really run.
#
# Idempotent: a second run checks each piece, starts only what is down, rewrites a config
# only when its content changed (restarting the daemons that read it) and takes a second or so.
# Needs root and apt-get (Debian/Ubuntu, no systemd needed). Without them it prints
# "skipped: <reason>", writes the reason to $MARKER_DIR/skipped and exits 0.
#
# Environment:
#   HESSVALLEY_SLURM_GPUS        fake GPUs on the node (default 2)
#   HESSVALLEY_SLURM_MARKER_DIR  where `ready` / `skipped` markers go (default /tmp/hessvalley-slurm)
set -euo pipefail

START_NS=$(date +%s%N)
N_GPUS=${HESSVALLEY_SLURM_GPUS:-2}
MARKER_DIR=${HESSVALLEY_SLURM_MARKER_DIR:-/tmp/hessvalley-slurm}
CLUSTER=hessvalley
PARTITION=main
ACCOUNT=hessvalley
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
ETC=/etc/slurm
LOGDIR=/var/log/slurm
SPOOL=/var/lib/slurm
FAKE_GPU_DIR=/dev/hessvalley-fakegpu

mkdir -p "$MARKER_DIR" 2>/dev/null || true
did=()

say() { echo "[setup_slurm] $*"; }
elapsed() { echo $((($(date +%s%N) - START_NS) / 1000000)); }
note() { did+=("$*"); say "$*"; }

skip() {
    say "skipped: $1"
    rm -f "$MARKER_DIR/ready" 2>/dev/null || true
    echo "$1" >"$MARKER_DIR/skipped" 2>/dev/null || true
    exit 0
}

die() {
    say "FAILED: $1 (after $(elapsed) ms)"
    for log in "$LOGDIR"/slurmctld.log "$LOGDIR"/slurmd.log "$LOGDIR"/slurmdbd.log \
        "$LOGDIR"/mariadb.log; do
        [ -f "$log" ] && { echo "--- tail $log"; tail -n 15 "$log"; }
    done
    rm -f "$MARKER_DIR/ready"
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$(($(date +%s) + timeout))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what"
        sleep 0.2
    done
}

# alive PIDFILE: the process named in PIDFILE exists.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pidfile PIDFILE NAME: stop a daemon by its PID file and remove the file.
stop_pidfile() {
    local pidfile=$1 name=$2
    if alive "$pidfile"; then
        local pid
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        note "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

# install_file MODE OWNER PATH < content: write PATH only when the content differs.
# Returns 0 when the file changed, 1 when it was already up to date.
install_file() {
    local mode=$1 owner=$2 path=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        chown "$owner" "$path"
        chmod "$mode" "$path"
        return 1
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$path"
    rm -f "$tmp"
    note "wrote $path"
    return 0
}

# ---------------------------------------------------------------- preconditions
[ "$(id -u)" -eq 0 ] || skip "not root (a single-node SLURM needs root to install and start daemons)"

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || skip "apt-get not found and packages missing: ${missing[*]}"
    say "installing ${missing[*]} (apt-get update + install)"
    t0=$(date +%s)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/tmp/hessvalley-slurm-apt.log 2>&1 ||
        { tail -n 30 /tmp/hessvalley-slurm-apt.log; die "apt-get install failed"; }
    note "installed ${missing[*]} in $(($(date +%s) - t0)) s"
fi

NODE=$(hostname -s)
if ! getent hosts "$NODE" >/dev/null; then
    echo "127.0.0.1 $NODE" >>/etc/hosts
    note "added $NODE to /etc/hosts"
fi

# ---------------------------------------------------------------- munge
[ -s /etc/munge/munge.key ] || {
    mungekey --create --keyfile /etc/munge/munge.key >/dev/null 2>&1 ||
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    note "created munge key"
}
install -d -o munge -g munge -m 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --force
    wait_for 10 munged sh -c 'munge -n | unmunge'
    note "started munged"
fi

# ---------------------------------------------------------------- MariaDB
install -d -o mysql -g mysql -m 755 /run/mysqld
install -d -o slurm -g slurm -m 755 "$LOGDIR"
if ! mariadb-admin ping >/dev/null 2>&1; then
    [ -d /var/lib/mysql/mysql ] || {
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
        note "initialised /var/lib/mysql"
    }
    rm -f /run/mysqld/mysqld.pid
    touch "$LOGDIR/mariadb.log" && chown mysql:mysql "$LOGDIR/mariadb.log"
    setsid nohup mariadbd --user=mysql --log-error="$LOGDIR/mariadb.log" \
        --pid-file=/run/mysqld/mysqld.pid --innodb-lock-wait-timeout=900 \
        </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadbd mariadb-admin ping
    note "started mariadbd"
fi
# slurmdbd runs as the slurm user and logs in over the Unix socket: no password needed.
if ! mariadb -N -e "SELECT 1 FROM mysql.user WHERE user='slurm' AND host='localhost'" |
    grep -q 1; then
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    note "created MariaDB user slurm (unix_socket auth)"
fi

# ---------------------------------------------------------------- configuration
install -d -o slurm -g slurm -m 755 "$ETC" "$SPOOL" "$SPOOL/slurmctld" "$SPOOL/slurmd"
install -d -m 755 "$FAKE_GPU_DIR"
gres_lines=""
for i in $(seq 0 $((N_GPUS - 1))); do
    # Distinct character devices (slurmd refuses plain files and a repeated /dev/null).
    [ -c "$FAKE_GPU_DIR/gpu$i" ] || { mknod "$FAKE_GPU_DIR/gpu$i" c 1 3; note "created $FAKE_GPU_DIR/gpu$i"; }
    gres_lines+="Name=gpu File=$FAKE_GPU_DIR/gpu$i"$'\n'
done

# CPUs, sockets, cores and RealMemory as slurmd itself detects them.
node_hw=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+ //; s/ UpTime=.*//')

restart_dbd=0
restart_ctld=0
restart_d=0
install_file 600 slurm:slurm "$ETC/slurmdbd.conf" <<EOF && restart_dbd=1
# Written by tests/slurm/setup_slurm.sh (single-node test cluster).
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StorageLoc=slurm_acct_db
EOF

install_file 644 slurm:slurm "$ETC/slurm.conf" <<EOF && { restart_ctld=1; restart_d=1; }
# Written by tests/slurm/setup_slurm.sh (single-node test cluster, fake GPUs).
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
# No cgroups on this machine: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
# Memory is requested (--mem, recorded in sacct) but not consumed: the profile asks paper-scale
# memory per job, which would otherwise serialise the test jobs on this small node.
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
# sacct shows the plugin's --comment (rule_<name>_wildcards_...): which rule a job ran
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
MinJobAge=300
SchedulerParameters=sched_interval=2
NodeName=$NODE $node_hw Gres=gpu:$N_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

install_file 644 slurm:slurm "$ETC/gres.conf" <<EOF && { restart_ctld=1; restart_d=1; }
# Written by tests/slurm/setup_slurm.sh: fake GPUs (character devices, not real GPUs).
$gres_lines
EOF

# ---------------------------------------------------------------- slurmdbd + registration
[ "$restart_dbd" -eq 1 ] && stop_pidfile /run/slurmdbd.pid slurmdbd
if ! alive /run/slurmdbd.pid; then
    rm -f /run/slurmdbd.pid
    slurmdbd
    note "started slurmdbd"
fi
wait_for 60 "slurmdbd to answer sacctmgr" sacctmgr -n show cluster

if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    note "registered cluster $CLUSTER in the accounting DB"
fi
if ! sacctmgr -n -P show account format=account | grep -qx "$ACCOUNT"; then
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="hessvalley tests" \
        Organization=hessvalley >/dev/null
    note "added account $ACCOUNT"
fi
if ! sacctmgr -n -P show assoc where user=root account="$ACCOUNT" format=user | grep -qx root; then
    sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null
    note "added user root to account $ACCOUNT"
fi

# ---------------------------------------------------------------- slurmctld + slurmd
[ "$restart_ctld" -eq 1 ] && stop_pidfile /run/slurmctld.pid slurmctld
[ "$restart_d" -eq 1 ] && stop_pidfile /run/slurmd.pid slurmd
if ! alive /run/slurmctld.pid; then
    rm -f /run/slurmctld.pid
    slurmctld
    note "started slurmctld"
fi
wait_for 30 slurmctld scontrol ping
if ! alive /run/slurmd.pid; then
    rm -f /run/slurmd.pid
    slurmd
    note "started slurmd"
fi

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1; }
deadline=$(($(date +%s) + 60))
until [ "$(node_state)" = idle ] || [ "$(node_state)" = mix ] || [ "$(node_state)" = alloc ]; do
    case "$(node_state)" in
    drain* | drng | down* | fail*)
        scontrol update NodeName="$NODE" State=RESUME 2>/dev/null && note "resumed node $NODE"
        ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] || die "node $NODE not idle (state '$(node_state)')"
    sleep 0.5
done

# accounting must answer for the plugin's default (sacct) status path
sacct -n -X -S now-1minutes >/dev/null || die "sacct does not answer"

version=$(sinfo --version)
{
    echo "version=$version"
    echo "node=$NODE"
    echo "partition=$PARTITION"
    echo "account=$ACCOUNT"
    echo "gpus=$N_GPUS"
} >"$MARKER_DIR/ready"
rm -f "$MARKER_DIR/skipped"
if [ "${#did[@]}" -eq 0 ]; then
    say "already up: $version, node $NODE $(node_state), gres gpu:$N_GPUS ($(elapsed) ms)"
else
    say "up: $version, node $NODE $(node_state), gres gpu:$N_GPUS; ${#did[@]} action(s) in $(elapsed) ms"
fi
