#!/usr/bin/env bash
# A real single-machine SLURM cluster (Debian's slurmctld/slurmd/munge as root, no systemd),
# with NODES emulated compute nodes on loopback, for testing llmjax's SLURM launch path.
#   bash scripts/slurm_cluster.sh install|start|stop
set -euo pipefail
NODES=${SLURM_TEST_NODES:-2}
HOST=$(hostname -s)
CPUS=$(nproc)
CONF=/etc/slurm/slurm.conf
TAG="# llmjax-slurm-test-nodes"

say() { echo "[slurm $(date +%T)] $*"; }
running() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $s != Z* ]]; }
node_names() { for i in $(seq 1 "$NODES"); do echo "node$i"; done; }

install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
  fi
}

write_conf() {
  local names i=0 n
  mapfile -t names < <(node_names)
  mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm /run/slurm
  {
    echo "ClusterName=llmjax"
    echo "SlurmctldHost=${HOST}(127.0.0.1)"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "MpiDefault=none"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/none"
    echo "SwitchType=switch/none"
    echo "SchedulerType=sched/backfill"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core"
    echo "ReturnToService=2"
    echo "SlurmctldPort=6817"
    echo "StateSaveLocation=/var/spool/slurmctld"
    echo "SlurmdSpoolDir=/var/spool/slurmd/%n"
    echo "SlurmctldPidFile=/run/slurm/slurmctld.pid"
    echo "SlurmdPidFile=/run/slurm/slurmd-%n.pid"
    echo "SlurmctldLogFile=/var/log/slurm/slurmctld.log"
    echo "SlurmdLogFile=/var/log/slurm/slurmd-%n.log"
    echo "InactiveLimit=0"
    echo "KillWait=5"
    echo "MinJobAge=300"
    echo "SlurmctldTimeout=30"
    echo "SlurmdTimeout=30"
    echo "Waittime=0"
    for n in "${names[@]}"; do
      i=$((i + 1))
      echo "NodeName=$n NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1"
    done
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${names[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES"
  } > "$CONF"
  for n in "${names[@]}"; do mkdir -p "/var/spool/slurmd/$n"; done
  # JAX's SLURM detection makes the first node of the step the coordinator: names must resolve.
  sed -i "/$TAG/d" /etc/hosts
  echo "127.0.0.1 ${names[*]} $TAG" >> /etc/hosts
  getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST $TAG" >> /etc/hosts
}

start() {
  stop >/dev/null 2>&1 || true
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  munge -n | unmunge >/dev/null
  write_conf
  slurmctld -c
  for n in $(node_names); do slurmd -N "$n"; done
  for _ in $(seq 1 60); do
    if [ "$(sinfo -h -N -o '%T' 2>/dev/null | grep -c '^idle')" -eq "$NODES" ]; then
      say "cluster of $NODES nodes is up"; return 0
    fi
    sleep 0.5
  done
  say "cluster did not come up"; sinfo -N || true; tail -n 30 /var/log/slurm/*.log; return 1
}

stop() {
  local f p
  scontrol shutdown >/dev/null 2>&1 || true
  for f in /run/slurm/*.pid /run/munge/munged.pid; do
    [ -f "$f" ] || continue
    p=$(cat "$f")
    if [[ $f == */munged.pid ]] && running "$p"; then kill "$p"; fi
    for _ in $(seq 1 40); do running "$p" || break; sleep 0.25; done
    if running "$p"; then kill -9 "$p" 2>/dev/null || true; fi
    rm -f "$f"
  done
  sed -i "/$TAG/d" /etc/hosts
  say "stopped"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
