#!/usr/bin/env bash
# Run a command as N parallel jobs, Kaldi style:
#   local/run_jobs.sh [--backend local|slurm] [--slurm_opts "..."] [--gpu G] [--num_nodes N] \
#       JOB=1:N log/decode.JOB.log cmd args-with-JOB
# or a single job: local/run_jobs.sh log/train.log cmd args
# --append keeps what the log holds (a resumed training run adds to its history) instead of
# starting it afresh.
# Every JOB in the log path and the command is replaced by the job index. Fails if any job fails.
# --backend and --slurm_opts default to $cmd_backend and $slurm_opts (cmd.sh exports them).
# With the slurm backend each job is one srun step: --gpu G adds --gres=gpu:G, --num_nodes N
# (> 1) adds --nodes=N --ntasks-per-node=1 (one task per node, as ESPnet's
# --dist_launcher slurm with --multiprocessing_distributed true expects). The local backend
# runs on this machine only, so it refuses --num_nodes > 1.
set -euo pipefail
backend=${cmd_backend:-local}
slurm_opts=${slurm_opts:-}
gpu=0
num_nodes=1
append=false
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in
        --backend) backend=$2; shift 2 ;;
        --slurm_opts) slurm_opts=$2; shift 2 ;;
        --gpu) gpu=$2; shift 2 ;;
        --num_nodes) num_nodes=$2; shift 2 ;;
        --append) append=true; shift ;;
        *) echo "$0: unknown option $1" >&2; exit 1 ;;
    esac
done
case $backend in
    local) [ "$num_nodes" -le 1 ] || { echo "$0: --num_nodes $num_nodes needs the slurm backend (cmd_backend=slurm)" >&2; exit 1; } ;;
    slurm) ;;
    *) echo "$0: unknown backend '$backend' (local or slurm)" >&2; exit 1 ;;
esac
srun_opts=()
# shellcheck disable=SC2206
[ -n "$slurm_opts" ] && srun_opts=($slurm_opts)
[ "$gpu" -gt 0 ] && srun_opts+=("--gres=gpu:${gpu}")
[ "$num_nodes" -gt 1 ] && srun_opts+=("--nodes=${num_nodes}" "--ntasks-per-node=1")
first=1; last=1; var=""
if [[ $1 =~ ^([A-Za-z]+)=([0-9]+):([0-9]+)$ ]]; then
    var=${BASH_REMATCH[1]}; first=${BASH_REMATCH[2]}; last=${BASH_REMATCH[3]}; shift
fi
log=$1; shift
pids=()
for ((i = first; i <= last; i++)); do
    this_log=$log; args=("$@")
    if [ -n "$var" ]; then
        this_log=${log//$var/$i}
        for k in "${!args[@]}"; do args[$k]=${args[$k]//$var/$i}; done
    fi
    mkdir -p "$(dirname "$this_log")"
    [ "$append" = true ] || : > "$this_log"
    {
        echo "# ${args[*]}"
        echo "# started at $(date)"
    } >> "$this_log"
    if [ "$backend" = slurm ]; then
        srun ${srun_opts[@]+"${srun_opts[@]}"} --export=ALL bash -c "$(printf '%q ' "${args[@]}")" >> "$this_log" 2>&1 &
    else
        bash -c "$(printf '%q ' "${args[@]}")" >> "$this_log" 2>&1 &
    fi
    pids+=($!)
done
failed=0
for k in "${!pids[@]}"; do
    if ! wait "${pids[$k]}"; then
        failed=$((failed + 1))
        job_log=${log//$var/$((first + k))}
        echo "$0: job $((first + k)) failed, see ${job_log}; its last lines:" >&2
        # the error, without ESPnet's warnings and tracebacks frames in between
        grep -v -e "Warning" -e "warnings.warn" -e "^\s*$" "$job_log" | tail -n 8 | sed 's/^/    /' >&2 || true
    fi
done
[ $failed -eq 0 ] || { echo "$0: $failed of $((last - first + 1)) jobs failed" >&2; exit 1; }
