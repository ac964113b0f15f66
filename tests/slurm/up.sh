#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on localhost for the CI test (Debian packages, no systemd needed).
# Everything it starts lives under $IED_SLURM_DIR (default /tmp/ied-slurm); tests/slurm/down.sh stops
# exactly that. The config is also placed at /etc/slurm/slurm.conf (an existing one is backed up and put
# back by down.sh): snakemake's jobstep executor strips SLURM_* variables, SLURM_CONF included, before
# the `srun` inside each job, so clients there only find the default path.
set -euo pipefail
DIR=${IED_SLURM_DIR:-/tmp/ied-slurm}
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q slurm-wlm munge >&2 \
        || { $SUDO apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q slurm-wlm munge >&2; }
fi

if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    echo "a cluster is already up in $DIR" >&2
    exit 0
fi
mkdir -p "$DIR"/{state,spool,log,munge}
chmod 700 "$DIR/munge"

# munge: our own key and socket, so a system munged (if any) is left alone.
if [ ! -f "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
fi
munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"

HOST=$(hostname -s)
CPUS=$(nproc)
# Leave the OS some memory; the jobs declare mem_mb and SLURM enforces the sum.
MEM=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
USER_NAME=$(id -un)
sed -e "s|@DIR@|$DIR|g" -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" \
    -e "s|@USER@|$USER_NAME|g" "$HERE/slurm.conf.in" > "$DIR/slurm.conf"
export SLURM_CONF="$DIR/slurm.conf"
SYSTEM_CONF=/etc/slurm/slurm.conf
if [ -e "$SYSTEM_CONF" ] && ! grep -q "^# ied-ci" "$SYSTEM_CONF"; then
    cp -p "$SYSTEM_CONF" "$DIR/system-slurm.conf.orig"
fi
$SUDO mkdir -p /etc/slurm
$SUDO cp "$SLURM_CONF" "$SYSTEM_CONF"

slurmctld -f "$SLURM_CONF" -i    # -i: ignore state left by an earlier cluster in $DIR
slurmd -f "$SLURM_CONF"

for _ in $(seq 60); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    if [ "$state" = idle ]; then
        echo "SLURM up: node $HOST idle ($CPUS CPUs, $MEM MB); export SLURM_CONF=$SLURM_CONF" >&2
        exit 0
    fi
    sleep 1
done
echo "SLURM did not become idle (state: '${state:-none}'); logs in $DIR/log" >&2
tail -n 20 "$DIR"/log/*.log >&2 || true
exit 1
