#!/usr/bin/env bash
# A throwaway single-node Slurm for the slow cluster test, from Debian's packages
# (`apt-get install slurm-wlm munge`): everything under one temp folder, a private munged, no
# accounting (finished jobs stay in `scontrol show job` for an hour instead), non-default
# ports, this machine as the only node, with SLOTS CPUs for jobs.
#
#   eval "$(bash tests/slurm.sh start [SLOTS])"   # exports SLURM_CONF and KDPIPE_TEST_SLURM_DIR
#   bash tests/slurm.sh stop "$KDPIPE_TEST_SLURM_DIR"
# Submit as the user who ran `start`: slurmd runs as that user, and a job submitted by another
# one hangs in launch-failed.
set -euo pipefail

if [ "${1:-}" = stop ]; then
  for pid in "$2"/*.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
  sleep 1
  rm -rf "$2"
  exit 0
fi
slots=${2:-2}
dir=$(mktemp -d /tmp/kdpipe-slurm.XXXXXX)
chmod 755 "$dir"
mkdir -m 755 "$dir/munge"
mkdir "$dir/state" "$dir/spool"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge.key"
munged --socket="$dir/munge/socket" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
  --log-file="$dir/munged.log" --seed-file="$dir/munge.seed" --force

node=$(hostname)
memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
cat > "$dir/slurm.conf" <<EOF
ClusterName=kdpipe-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(port)
SlurmdPort=$(port)
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
MinJobAge=3600
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$slots Sockets=1 CoresPerSocket=$slots ThreadsPerCore=1 RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"
slurmctld
slurmd
for _ in $(seq 100); do  # the node reports idle within a second or two
  sinfo -h -o %t 2>/dev/null | grep -q idle && break
  sleep 0.2
done
sinfo -h -o %t | grep -q idle || { echo "slurm did not start; see $dir/*.log" >&2; exit 1; }
echo "export SLURM_CONF=$dir/slurm.conf"
echo "export KDPIPE_TEST_SLURM_DIR=$dir"
