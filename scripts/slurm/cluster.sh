#!/usr/bin/env bash
# A single-node Slurm cluster for tests, in a directory of its own (needs root, and Debian's
# slurmctld, slurmd, slurm-client and munge):
#   scripts/slurm/cluster.sh up DIR     starts munged (unless running), slurmctld and slurmd on ports
#                                       the OS picks; prints the path of slurm.conf (set SLURM_CONF)
#   scripts/slurm/cluster.sh down DIR   stops the daemons it started
# Exit code 3: this machine cannot run them (no packages, or munge cannot start).
set -euo pipefail
cmd=${1:?usage: cluster.sh up|down DIR}
dir=$(mkdir -p "${2:?missing DIR}" && cd "$2" && pwd)
host=$(hostname -s)

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$cmd" in
  up)
    for b in slurmctld slurmd sbatch sinfo munged; do
      command -v "$b" >/dev/null || { echo "cluster.sh: $b is not installed" >&2; exit 3; }
    done
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
      mkdir -p /run/munge
      chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
      [ -f /etc/munge/munge.key ] || mungekey --create
      runuser -u munge -- /usr/sbin/munged
      touch "$dir/started-munged"
      munge -n | unmunge >/dev/null || { echo "cluster.sh: munge does not work here" >&2; exit 3; }
    fi
    # slurmd makes a unix socket per job step in its spool directory; a socket path has at most
    # 107 bytes, and a longer one leaves every job pending with nothing said.
    if [ ${#dir} -gt 60 ]; then
      echo "cluster.sh: $dir is ${#dir} bytes long; slurmd's step sockets under it need a directory of at most 60" >&2
      exit 2
    fi
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat >"$dir/slurm.conf" <<CONF
ClusterName=cohorttest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES State=UP OverSubscribe=FORCE:4
CONF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -c -f "$SLURM_CONF"
    slurmd -N "$host" -f "$SLURM_CONF"
    for _ in $(seq 200); do
      [ "$(sinfo -h -N -o %t 2>/dev/null | head -1)" = idle ] && { echo "$SLURM_CONF"; exit 0; }
      sleep 0.1
    done
    echo "cluster.sh: the node never became idle; see $dir/log" >&2
    exit 1
    ;;
  down)
    export SLURM_CONF="$dir/slurm.conf"
    [ -f "$SLURM_CONF" ] && timeout 20 scontrol shutdown >/dev/null 2>&1 || true
    for f in slurmctld.pid slurmd.pid; do
      [ -f "$dir/$f" ] && kill -9 "$(cat "$dir/$f")" 2>/dev/null || true
    done
    if [ -f "$dir/started-munged" ]; then
      pkill -x munged || true
      rm -f "$dir/started-munged"
    fi
    ;;
  *)
    echo "cluster.sh: unknown command '$cmd' (up or down)" >&2
    exit 2
    ;;
esac
