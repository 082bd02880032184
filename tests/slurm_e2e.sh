#!/usr/bin/env bash
# accelerate_configs/slurm.sbatch under a real SLURM on this one machine: Debian's slurm-wlm (22.05) and
# munge, one slurmctld and two slurmd "nodes" (n1, n2; ../shared/SLURM-LOCAL.md has the facts), no GPUs:
# the CPU-cluster path (LARGEBATCH_PROCS_PER_NODE=1, --gpus-per-node=0), one process per node.
#   1. complete:   a job that runs to the end;
#   2. requeue:    `scontrol requeue` once its step-4 checkpoint exists; it comes back and resumes;
#   3. time limit: --time=4 with the script's SIGTERM 120 s before it, on a run longer than one
#                  allocation: it checkpoints, requeues itself and continues until done.
# Each must end with the metrics.jsonl and weights, bit for bit, of the same run on 2 processes of one
# machine (cpu_2proc.yaml); SLURM must record the last part COMPLETED.
#
#   sudo bash tests/slurm_e2e.sh [WORKDIR]     # from the repository root, after `make setup`; ~12 min
#
# It installs packages, writes /etc/slurm/slurm.conf and adds "n1 n2" to /etc/hosts: a scratch machine's
# job, not CI's (each requeue waits SLURM's 2 minutes before the job starts again).
set -euo pipefail
cd "$(dirname "$0")/.."
W=$(realpath -m "${1:-runs/slurm-e2e}")
PY=$PWD/.venv/bin/python
export PATH=$PWD/.venv/bin:$PATH OMP_NUM_THREADS=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1

setup_slurm() {
    command -v slurmctld >/dev/null || { apt-get update -qq && apt-get install -y -qq slurm-wlm munge; }
    mkdir -p /run/munge /var/spool/slurmctld /var/log/slurm && chown munge:munge /run/munge
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    grep -q " n1 n2" /etc/hosts || echo "127.0.0.1 n1 n2" >> /etc/hosts
    cat > /etc/slurm/slurm.conf <<EOF
ClusterName=largebatch-e2e
SlurmctldHost=$(hostname)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
JobRequeue=1
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd-%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
SlurmctldLogFile=/var/log/slurm/slurmctld.log
NodeName=n1 NodeHostname=localhost Port=17001 CPUs=1 State=UNKNOWN
NodeName=n2 NodeHostname=localhost Port=17002 CPUs=1 State=UNKNOWN
PartitionName=main Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
    if ! pgrep -x slurmctld >/dev/null; then
        slurmctld -D > /var/log/slurm/slurmctld.out 2>&1 &
        sleep 2
        for n in n1 n2; do slurmd -D -N $n > /var/log/slurm/slurmd-$n.out 2>&1 & done
    fi
    for _ in $(seq 60); do
        [[ $(sinfo -h -o %t | sort -u) == idle ]] && return
        sleep 1
    done
    sinfo; echo "slurm_e2e: the two nodes did not come up (see /var/log/slurm)" >&2; exit 1
}

# submit NAME SBATCH_OPTIONS... -- RECIPE_ARGS...: the job id
submit() {
    local name=$1; shift
    local opts=()
    while [[ $1 != -- ]]; do opts+=("$1"); shift; done
    shift
    LARGEBATCH_PROCS_PER_NODE=1 ACCELERATE_CONFIG=accelerate_configs/cpu_2proc.yaml \
        sbatch --parsable --nodes=2 --gpus-per-node=0 --job-name="$name" --output="$W/$name.out" "${opts[@]}" \
        accelerate_configs/slurm.sbatch recipes/fashion_mnist.py "$@" --run-dir "$W/$name"
}

wait_done() {  # the job's last jobcomp record, once it has left the queue
    while [[ -n $(squeue -h -j "$1" 2>/dev/null) ]]; do sleep 5; done
    grep "JobId=$1 " /var/log/slurm/jobcomp.log | tail -n 1
}

reference() {  # NAME RECIPE_ARGS...: the same run on 2 processes of this machine
    local name=$1; shift
    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml --num_processes 2 --mixed_precision no \
        recipes/fashion_mnist.py "$@" --run-dir "$W/$name" > "$W/$name.out" 2>&1
}

same_run() {  # A B: bitwise the same metrics.jsonl and final weights
    cmp "$W/$1/metrics.jsonl" "$W/$2/metrics.jsonl"
    "$PY" - "$W/$1" "$W/$2" <<'EOF'
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file
a, b = (load_file(sorted(Path(d, "checkpoints").glob("step_*"))[-1] / "model.safetensors") for d in sys.argv[1:])
assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ"
EOF
}

check() {  # SCENARIO REFERENCE JOBCOMP_RECORD: COMPLETED, and bit for bit the reference
    [[ $3 == *JobState=COMPLETED* ]] || { echo "$1: $3" >&2; tail -n 20 "$W/$1.out" >&2; exit 1; }
    same_run "$1" "$2"
    echo "slurm_e2e: $1: COMPLETED after $(grep -c 'requeueing job' "$W/$1.out" || true) self-requeue(s), bitwise the reference"
}

setup_slurm
rm -rf "$W" && mkdir -p "$W"
SHORT=(--data-dir /usr/share/datasets/fashion-mnist --subset 2048 --global-batch 256 --micro-batch 64 --epochs 4
       --checkpoint-every 2)
LONG=(--data-dir /usr/share/datasets/fashion-mnist --global-batch 256 --micro-batch 128 --epochs 3
      --checkpoint-every 40)
reference reference-short "${SHORT[@]}" & short=$!
reference reference-long "${LONG[@]}" & long=$!
wait $short $long  # not a bare `wait`: the SLURM daemons are this shell's children too

job=$(submit complete --time=10 -- "${SHORT[@]}")
check complete reference-short "$(wait_done "$job")"

job=$(submit requeue --time=10 -- "${SHORT[@]}")
until [[ -e $W/requeue/checkpoints/step_00000004/progress.json ]]; do
    [[ -n $(squeue -h -j "$job") ]] || { echo "requeue: the job ended before its step-4 checkpoint" >&2; exit 1; }
    sleep 0.5
done
scontrol requeue "$job"
check requeue reference-short "$(wait_done "$job")"

job=$(submit timelimit --time=4 -- "${LONG[@]}")
check timelimit reference-long "$(wait_done "$job")"
grep -h "requeueing job" "$W"/*.out
