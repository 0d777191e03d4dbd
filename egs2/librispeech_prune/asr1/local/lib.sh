# Helpers of run.sh (sourced): targets, freshness, ESPnet training, the training job pool.
# They read run.sh's options and paths.

# "0.5" -> params:0.5 (--target_kind); tag "params0.5"
parse_target() { local t=$1; [[ $t == *:* ]] || t=${target_kind}:$t; echo "$t"; }
target_tag() { local t; t=$(parse_target "$1"); echo "${t%%:*}${t#*:}"; }

# is $1 newer than (or as new as) all of $2...? (missing $1 -> no)
up_to_date() { local out=$1; shift; [ -e "$out" ] || return 1; local f; for f in "$@"; do [ "$f" -nt "$out" ] && return 1; done; return 0; }

runs() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }  # does stage $1 run?

dist_args() {  # dist_args OUTPUT_DIR: ESPnet's distributed-training options for --ngpu / --num_nodes
    if [ "$num_nodes" -gt 1 ]; then
        # one srun task per node (run_jobs.sh --num_nodes), each spawning a process per GPU;
        # ranks meet through a fresh file on the shared file system (as espnet2.bin.launch does)
        echo "--multiprocessing_distributed true --dist_launcher slurm"
        echo "--dist_init_method file://$(cd "$1" && pwd)/.dist_init_$(date +%s)_$$"
        [ "$ngpu" -eq 0 ] && echo "--dist_backend gloo"
    elif [ "$ngpu" -gt 1 ]; then
        echo "--multiprocessing_distributed true"   # ESPnet spawns one process per GPU
    fi
    return 0
}

abandon() {  # abandon OUTPUT_DIR: after a failed training, keep nothing that looks like work
    local out=$1
    if [ -f "${out}/checkpoint.pth" ]; then
        log "${out}: training failed; its checkpoint.pth is kept and a re-run resumes from it"
    else
        rm -rf "${out}.failed"
        mv "$out" "${out}.failed"
        log "${out}: training failed before its first checkpoint; moved to ${out}.failed (log: ${out}.failed/train.log)"
    fi
}

train() {  # train OUTPUT_DIR CONFIG [args...]: ESPnet training, resumable
    local out=$1 config=$2; shift 2
    mkdir -p "$out"
    local dist; dist=$(dist_args "$out")
    local resume=(); [ -f "${out}/checkpoint.pth" ] && resume=(--append)  # the log keeps its epochs
    log "training ${out} (log: ${out}/train.log)"
    # shellcheck disable=SC2086
    if ! ${train_cmd} "${resume[@]}" --gpu "$ngpu" --num_nodes "$num_nodes" "${out}/train.log" python -m espnet_prune.bin.asr_train \
        --config "$config" --output_dir "$out" --ngpu "$ngpu" $dist --resume true \
        --use_tensorboard true --use_matplotlib false \
        "${train_data_opts[@]//SPEECH_TYPE/${speech_type}}" \
        ${train_args} "$@"; then
        rm -f "${out}"/.dist_init_*
        abandon "$out"
        return 1
    fi
    rm -f "${out}"/.dist_init_*
}

# at most $train_jobs training jobs at once, each with its share of the cores
job_pids=(); job_names=()
start_job() {  # start_job NAME FUNCTION ARGS...
    local name=$1; shift
    while [ "$(jobs -rp | wc -l)" -ge "$train_jobs" ]; do wait -n || true; done
    ( "$@" ) & job_pids+=($!); job_names+=("$name")
}
wait_jobs() {  # wait for every started job; fail the stage if one failed
    local i failed=()
    for i in "${!job_pids[@]}"; do wait "${job_pids[$i]}" || failed+=("${job_names[$i]}"); done
    job_pids=(); job_names=()
    [ ${#failed[@]} -eq 0 ] || { log "failed: ${failed[*]}"; exit 1; }
}
threads_for() {  # OpenMP threads of each of N concurrent jobs
    local n=$(( $1 < train_jobs ? $1 : train_jobs )); n=$(( n > 0 ? n : 1 ))
    echo $(( $(nproc) / n > 0 ? $(nproc) / n : 1 ))
}

# the latency table a pruning config reads (model_conf.latency_table), if it names a file
latency_table() { python -c 'import sys, yaml; t = (yaml.safe_load(open(sys.argv[1])).get("model_conf") or {}).get("latency_table"); print(t if isinstance(t, str) else "")' "$1" 2>/dev/null || true; }

# a training dir's checkpoint older than an input of its run (the model it starts from, its
# config) belongs to another run: it is dropped, not resumed (an interrupted run resumes)
drop_stale_checkpoint() {  # drop_stale_checkpoint DIR INPUT...
    local out=$1; shift
    [ -e "${out}/checkpoint.pth" ] || return 0
    local f; for f in "$@"; do
        if [ -e "$f" ] && [ "$f" -nt "${out}/checkpoint.pth" ]; then
            log "${out}: ${f} is newer than its checkpoint: training anew"
            rm -rf "${out}"/checkpoint.pth "${out}"/*epoch.pth "${out}"/latest.pth "${out}"/valid.*.pth
            return 0
        fi
    done
}
