#!/bin/sh
# A throw-away one-node slurm cluster on localhost (munged + slurmctld + slurmd as
# root), every file under DIR, for tests/test_dist.py or a developer's own try:
#
#   sh tests/slurm_cluster.sh start DIR     # writes DIR/slurm.conf, starts, waits for idle
#   SLURM_CONF=DIR/slurm.conf srun -N1 -n2 hostname
#   sh tests/slurm_cluster.sh stop DIR
#
# Needs root and Debian's slurm-wlm and munge (apt-get install slurm-wlm munge).
set -eu

cmd=${1:?usage: slurm_cluster.sh start|stop DIR}
DIR=${2:?usage: slurm_cluster.sh start|stop DIR}
CPUS=${SLURM_CLUSTER_CPUS:-2}

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "slurm_cluster.sh: '$1' not found: apt-get install slurm-wlm munge" >&2; exit 2; }
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop() {
    for p in slurmd slurmctld munged; do
        [ -f "$DIR/$p.pid" ] || continue
        pid=$(cat "$DIR/$p.pid")
        kill "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$DIR/$p.pid"
    done
}

dump_logs() {
    for f in munged.log slurmctld.log slurmd.log; do
        [ -f "$DIR/$f" ] && { echo "--- $DIR/$f" >&2; tail -n 30 "$DIR/$f" >&2; }
    done
    return 0
}

case "$cmd" in
stop)
    stop
    exit 0 ;;
start) ;;
*)
    echo "usage: slurm_cluster.sh start|stop DIR" >&2; exit 2 ;;
esac

for c in munged mungekey slurmctld slurmd sinfo srun; do need "$c"; done
[ "$(id -u)" -eq 0 ] || { echo "slurm_cluster.sh: must run as root" >&2; exit 2; }

DIR=$(mkdir -p "$DIR" && cd "$DIR" && pwd)
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/tmp"
chmod 755 "$DIR"
rm -f "$DIR/munge.key"
mungekey --create --keyfile="$DIR/munge.key" 2>/dev/null ||
    { dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 2>/dev/null; chmod 600 "$DIR/munge.key"; }

cat > "$DIR/slurm.conf" <<EOF
# written by tests/slurm_cluster.sh: one node, localhost, everything under $DIR
ClusterName=dmcpci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
TmpFS=$DIR/tmp
MailProg=/bin/true
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
cat > "$DIR/cgroup.conf" <<EOF
CgroupPlugin=autodetect
CgroupMountpoint=/sys/fs/cgroup
EOF

export SLURM_CONF="$DIR/slurm.conf"
stop                                   # leftovers of an earlier run in the same DIR

munged --force --key-file="$DIR/munge.key" --socket="$DIR/munge.socket" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" --seed-file="$DIR/munged.seed" ||
    { echo "slurm_cluster.sh: munged did not start" >&2; dump_logs; exit 1; }
slurmctld -f "$DIR/slurm.conf" -i ||
    { echo "slurm_cluster.sh: slurmctld did not start" >&2; dump_logs; stop; exit 1; }
slurmd -f "$DIR/slurm.conf" -N localhost ||
    { echo "slurm_cluster.sh: slurmd did not start" >&2; dump_logs; stop; exit 1; }

i=0
while :; do
    state=$(sinfo -h -N -n localhost -o %t 2>/dev/null || true)
    case "$state" in idle*) break ;; esac
    i=$((i + 1))
    if [ $i -ge 60 ]; then
        echo "slurm_cluster.sh: node localhost is not idle after 30 s (state '$state')" >&2
        dump_logs; stop; exit 1
    fi
    sleep 0.5
done
echo "slurm cluster up: SLURM_CONF=$DIR/slurm.conf"
