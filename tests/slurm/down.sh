#!/usr/bin/env bash
# Stop what tests/slurm/up.sh started (only the daemons whose pid files live in $IED_SLURM_DIR).
set -uo pipefail
DIR=${IED_SLURM_DIR:-/tmp/ied-slurm}
export SLURM_CONF="$DIR/slurm.conf"
if [ -f "$SLURM_CONF" ]; then scancel --user="$(id -un)" 2>/dev/null; fi
for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null
        rm -f "$pidfile"
    fi
done
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
SYSTEM_CONF=/etc/slurm/slurm.conf
if grep -q "^# ied-ci" "$SYSTEM_CONF" 2>/dev/null; then
    if [ -f "$DIR/system-slurm.conf.orig" ]; then
        $SUDO cp -p "$DIR/system-slurm.conf.orig" "$SYSTEM_CONF" && rm -f "$DIR/system-slurm.conf.orig"
    else
        $SUDO rm -f "$SYSTEM_CONF"
    fi
fi
echo "SLURM in $DIR stopped" >&2
