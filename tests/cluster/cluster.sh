#!/bin/bash
# A real multi-node cluster on one Linux machine, for the integration tests (needs root).
#   N network namespaces lcK = nodes "nodeK" (alias "hostK") at 10.77.0.K on bridge lcbr0;
#   the launcher side (login node) is the root namespace at 10.77.0.254.
#   munged + slurmctld in the root namespace, one slurmd and one sshd per node.
# Usage: cluster.sh up N BASE | cluster.sh down N BASE | cluster.sh on K BASE CMD...
# After `up`, BASE/env holds the variables a client needs (SLURM_CONF, PATH with the ssh wrapper).
set -euo pipefail
ACTION=$1 N=$2 B=$3
NET=10.77.0
CTL=$(hostname -s)  # slurmctld refuses to start unless SlurmctldHost is this machine's name

on_node() {  # on_node K CMD...: run CMD in node K's namespace, with its own hostname and /etc/hosts.
  # nsenter+unshare rather than `ip netns exec`, which remounts /sys and hides cgroups from slurmd.
  local k=$1; shift
  nsenter --net=/run/netns/lc$k unshare --uts --mount sh -c \
    'mount --bind "$0/hosts" /etc/hosts && hostname "$1" && shift && exec "$@"' "$B" "node$k" "$@"
}

up() {
  mkdir -p "$B"/{munge,slurm/state,slurm/spool,slurm/log,ssh,bin}
  ip link show lcbr0 >/dev/null 2>&1 || ip link add lcbr0 type bridge
  ip addr replace $NET.254/24 dev lcbr0
  ip link set lcbr0 up
  { echo "127.0.0.1 localhost"; echo "$NET.254 $CTL"; } > "$B/hosts"
  for k in $(seq 1 "$N"); do
    ip netns list | grep -qw "lc$k" || ip netns add "lc$k"
    # A pair whose other end went with an earlier namespace (the kernel frees them lazily) is stale.
    ip -n "lc$k" link show eth0 >/dev/null 2>&1 || ip link del "lc$k-h" 2>/dev/null || true
    ip link show "lc$k-h" >/dev/null 2>&1 || ip link add "lc$k-h" type veth peer name eth0 netns "lc$k"
    ip link set "lc$k-h" master lcbr0 up
    ip -n "lc$k" addr replace "$NET.$k/24" dev eth0
    ip -n "lc$k" link set eth0 up
    ip -n "lc$k" link set lo up
    echo "$NET.$k node$k host$k" >> "$B/hosts"
  done

  chmod 755 "$B/munge"  # munged insists on a 0755 socket directory
  [ -f "$B/munge/key" ] || mungekey -c -k "$B/munge/key"
  munged --socket="$B/munge/sock" --key-file="$B/munge/key" --log-file="$B/munge/log" \
         --pid-file="$B/munge/pid" --seed-file="$B/munge/seed"

  cat > "$B/slurm/slurm.conf" <<EOF
ClusterName=launchertest
SlurmctldHost=$CTL($NET.254)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=17817
SlurmdPort=17818
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$B/munge/sock,cred_expire=20
StateSaveLocation=$B/slurm/state
SlurmdSpoolDir=$B/slurm/spool/%n
SlurmctldPidFile=$B/slurm/slurmctld.pid
SlurmdPidFile=$B/slurm/slurmd-%n.pid
SlurmctldLogFile=$B/slurm/log/slurmctld.log
SlurmdLogFile=$B/slurm/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
# The main scheduling pass (default every 60 s) is what starts a requeued job once it is eligible.
SchedulerParameters=sched_interval=5
KillWait=30
NodeName=node[1-$N] NodeAddr=$(seq -s, -f "$NET.%g" 1 "$N") CPUs=$(nproc) RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$B/slurm/slurm.conf
  slurmctld -c
  for k in $(seq 1 "$N"); do on_node "$k" slurmd -N "node$k"; done

  mkdir -p /run/sshd
  [ -f "$B/ssh/id" ] || ssh-keygen -q -t ed25519 -N '' -f "$B/ssh/id"
  [ -f "$B/ssh/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$B/ssh/hostkey"
  cp "$B/ssh/id.pub" "$B/ssh/authorized_keys"
  printf '%s\n' "HostKey $B/ssh/hostkey" "AuthorizedKeysFile $B/ssh/authorized_keys" \
    "PermitRootLogin prohibit-password" "PasswordAuthentication no" "KbdInteractiveAuthentication no" \
    "UsePAM no" "StrictModes no" "MaxStartups 100" > "$B/ssh/sshd_config"
  { for k in $(seq 1 "$N"); do printf 'Host node%s host%s\n  HostName %s.%s\n' "$k" "$k" "$NET" "$k"; done
    printf '%s\n' "Host *" "  User root" "  IdentityFile $B/ssh/id" "  IdentitiesOnly yes" \
      "  StrictHostKeyChecking no" "  UserKnownHostsFile /dev/null" "  LogLevel ERROR" "  BatchMode yes"
  } > "$B/ssh/ssh_config"
  # The launcher calls plain `ssh`; this wrapper, first in PATH, points it at the test config.
  printf '#!/bin/sh\nexec /usr/bin/ssh -F %s/ssh/ssh_config "$@"\n' "$B" > "$B/bin/ssh"
  chmod +x "$B/bin/ssh"
  for k in $(seq 1 "$N"); do
    on_node "$k" /usr/sbin/sshd -f "$B/ssh/sshd_config" -o "PidFile=$B/ssh/sshd-$k.pid" -E "$B/ssh/sshd-$k.log"
  done
  for _ in $(seq 1 150); do [ "$(sinfo -h -t idle -o %D)" = "$N" ] && break; sleep 0.2; done
  [ "$(sinfo -h -t idle -o %D)" = "$N" ] || { echo "slurm nodes did not come up" >&2; sinfo -N >&2; exit 1; }
  printf 'SLURM_CONF=%s\nPATH_PREFIX=%s\n' "$SLURM_CONF" "$B/bin" > "$B/env"
}

down() {
  for f in "$B"/ssh/sshd-*.pid "$B"/slurm/slurmd-*.pid "$B"/slurm/slurmctld.pid "$B"/munge/pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 0.5
  for k in $(seq 1 "$N"); do
    # A process left in the namespace (an ssh session whose client was killed) would keep it, and
    # its veth pair, alive after the name is gone: the next `up` could not make the pair again.
    ip netns pids "lc$k" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "lc$k" 2>/dev/null || true  # also removes the veth pairs
  done
  ip link del lcbr0 2>/dev/null || true
  rm -rf "$B/slurm/state" "$B/slurm/spool" "$B"/slurm/*.pid "$B"/ssh/*.pid "$B/munge/pid" "$B/munge/sock"*
}

case $ACTION in
  up) up ;;
  down) down ;;
  on) k=$4; shift 4; on_node "$k" "$@" ;;
  *) echo "usage: $0 up|down N BASE | on N BASE K CMD..." >&2; exit 2 ;;
esac
