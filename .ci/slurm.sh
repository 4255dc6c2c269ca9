#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests that sweep on SLURM (tests/test_slurm.py):
# Debian's slurm-wlm and munge, installed where missing; munged, slurmctld and slurmd on localhost.
# Idempotent: running it again with the daemons up changes nothing.
set -euo pipefail
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  $sudo apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 || {
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq slurm-wlm munge >/dev/null; }
fi
host=$(hostname)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
$sudo mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
$sudo tee /etc/slurm/slurm.conf >/dev/null <<CONF
ClusterName=rps-ci
SlurmctldHost=${host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# A requeued job waits cred_expire + 1 s before it may start again (120 s by default): 10 s here.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MinJobAge=30
KillWait=5
JobRequeue=1
NodeName=${host} CPUs=$(nproc) RealMemory=${mem_mb} State=UNKNOWN
PartitionName=ci Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
[ -f /etc/munge/munge.key ] || $sudo mungekey -c >/dev/null 2>&1 || $sudo /usr/sbin/create-munge-key >/dev/null 2>&1
$sudo chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
pgrep -x munged >/dev/null || $sudo runuser -u munge -- /usr/sbin/munged
if pgrep -x slurmctld >/dev/null; then $sudo pkill -x slurmctld; sleep 1; fi  # (cred_expire is read at start)
$sudo /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || $sudo /usr/sbin/slurmd
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -qE "^idle|^mix" && exit 0
  sleep 1
done
echo "SLURM did not come up; see /var/log/slurm/" >&2
exit 1
