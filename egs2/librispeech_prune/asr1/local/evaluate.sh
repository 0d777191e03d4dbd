# Stages 8-9 of run.sh (sourced): decode every model on every test set, score, report.
# ${models[@]} holds NAME=DIR entries (run.sh).

decode_stage() {  # stage 8: every model on every test set, each split over $nj jobs
    # Job j decodes part j of every stale (model, set) pair in one process
    # (espnet_prune.bin.decode_list: ESPnet imported once per job, not once per model, set and job);
    # a part is stale when its model, the inference config or its keys are newer than its .done.
    local m dir s dec n j d lists=${exp}/decode_lists pending=() jobs=0
    local new=${lists}.new  # the job lists, replacing the last ones only when there is work
    rm -rf "$new"; mkdir -p "$new"
    for m in "${models[@]}"; do
        dir=${m#*=}
        for s in $test_sets; do
            dec=${dir}/${inference_tag}_${s}
            if up_to_date "${dec}/text" "${dir}/model.pth" "$inference_config"; then
                log "${dec}: complete, skipped"; continue
            fi
            # keys.J.scp are rewritten only when their content changes
            n=$(python -m espnet_prune.recipe.steps split_scp --scp "${dump}/${s}/${speech_file}" --nj "$nj" --out_dir "${dec}/logdir")
            for d in "${dec}"/logdir/output.*; do [ -d "$d" ] && [ "${d##*.}" -gt "$n" ] && rm -rf "$d"; done
            for ((j = 1; j <= n; j++)); do
                if up_to_date "${dec}/logdir/output.${j}/.done" "${dir}/model.pth" "$inference_config" "${dec}/logdir/keys.${j}.scp"; then
                    continue
                fi
                rm -rf "${dec}/logdir/output.${j}"
                printf '%q ' --ngpu 0 --batch_size 1 --config "$inference_config" --fast_decoder "$fast_decoder" \
                    --asr_train_config "${dir}/config.yaml" --asr_model_file "${dir}/model.pth" \
                    --data_path_and_name_and_type "${dec}/logdir/keys.${j}.scp,speech,${speech_type}" \
                    --output_dir "${dec}/logdir/output.${j}" >> "${new}/decode.${j}.list"
                echo >> "${new}/decode.${j}.list"
                [ "$j" -gt "$jobs" ] && jobs=$j
            done
            pending+=("${dec}=${s}=${n}")
        done
    done
    if [ "$jobs" -eq 0 ]; then
        rm -rf "$new"
    else
        for ((j = 1; j <= jobs; j++)); do touch "${new}/decode.${j}.list"; done  # one may have nothing left
        rm -rf "$lists"; mv "$new" "$lists"
        log "decoding $(cat "$lists"/decode.*.list | wc -l) model/set parts in ${jobs} jobs (logs: ${lists}/decode.JOB.log)"
        # one thread per job unless cores are left over: oversubscribed OpenMP is many times slower
        ${decode_cmd} JOB=1:"$jobs" "${lists}/decode.JOB.log" \
            env OMP_NUM_THREADS=$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 )) \
            python -m espnet_prune.bin.decode_list "${lists}/decode.JOB.list"
    fi
    local entry parts
    for entry in "${pending[@]}"; do
        IFS== read -r dec s n <<< "$entry"
        parts=(); for ((j = 1; j <= n; j++)); do parts+=("${dec}/logdir/output.${j}/1best_recog/text"); done
        python -m espnet_prune.recipe.steps merge_text --output "${dec}/text" --expect "${dump}/${s}/text" "${parts[@]}"
        log "decoded ${dec}/text"
    done
}

training_spec() {  # training_spec NAME PREFIX DIR...: "NAME=PREFIX" + the DIRs with a train.log
    local name=$1 prefix=$2 d dirs=(); shift 2
    for d in "$@"; do [ -f "${d}/train.log" ] && dirs+=("$d"); done
    echo "${name}=${prefix}$(IFS=,; echo "${dirs[*]}")"
}

report_stage() {  # stage 9: sclite-compatible scoring per model and set, then RESULTS.md
    local m dir s dec spk spk_args results published model_args t tag b report_args png
    results=()
    for m in "${models[@]}"; do
        dir=${m#*=}
        for s in $test_sets; do
            dec=${dir}/${inference_tag}_${s}
            results+=("${dec}/score_wer/result.txt")
            if up_to_date "${dec}/score_wer/result.txt" "${dec}/text"; then
                log "${dec}/score_wer: complete, skipped"; continue
            fi
            # per voice family for the mini corpus, per speaker otherwise
            spk=${data}/${s}/utt2accent; [ -f "$spk" ] || spk=${dump}/${s}/utt2spk
            spk_args=(); [ -f "$spk" ] && spk_args=(--utt2spk "$spk")
            python -m espnet_prune.data.scoring --ref "${dump}/${s}/text" --hyp "${dec}/text" \
                --out_dir "${dec}/score_wer" "${spk_args[@]}" --sclite auto > /dev/null
            log "${dec}: $(grep -m1 'Sum/Avg' "${dec}/score_wer/result.txt" || true)"
        done
    done
    published=()
    [ "$dataset" = librispeech_100 ] && published=(--published librispeech_100)
    model_args=(); for m in "${models[@]}"; do model_args+=(--model "$m"); done
    [ "$control" = true ] && model_args+=(--control baseline_control)
    while read -r tag _; do
        model_args+=(--train_log "prune_${tag}=${exp}/prune_${tag}/train.log")
    done <<< "$pruning_runs"
    for t in $prune_targets; do
        tag=$(target_tag "$t")
        # each family member against the separately pruned model of its target, where there is one
        [ "$family" = true ] && [ -f "${exp}/prune_${tag}/final/model.pth" ] && model_args+=(--pair "family_${tag}:prune_${tag}")
        # each pruned model (or family member) against its same-size baselines, in the paired-bootstrap table
        for b in $baselines; do model_args+=(--pair "$(pruned_name "$t"):${b}_${tag}"); done
    done
    # each model's training runs (its cost; the teacher's share for those that start from it)
    [ "$teacher_mode" = false ] && model_args+=(--training "$(training_spec baseline "" "$baseline")")
    local name kind
    for m in "${models[@]:1}"; do
        name=${m%%=*}; dir=${m#*=}; dir=${dir%/*}
        case $name in
            baseline_control) model_args+=(--training "$(training_spec "$name" teacher+ "$dir")") ;;
            scratch_*) model_args+=(--training "$(training_spec "$name" "" "$dir")") ;;
            family_*_shrunk) model_args+=(--training "$(training_spec "$name" teacher+ "$family_run")") ;;
            family_*) model_args+=(--training "$(training_spec "$name" teacher+ "$family_run" "${dir}/finetune")") ;;
            prune_*) model_args+=(--training "$(training_spec "$name" teacher+ "$dir" "${dir}/finetune")") ;;
            *) model_args+=(--training "$(training_spec "$name" teacher+ "${dir}/finetune")") ;;
        esac
    done
    [ "$teacher_mode" = true ] && model_args=("${model_args[@]/teacher+/}")  # no teacher training here
    # the retrainings with other seeds, beside the first seed's model
    for t in $seed_targets; do
        [ -n "$seeds" ] || break
        for kind in prune scratch; do
            [ "$kind" = scratch ] && [[ " $baselines " != *" scratch "* ]] && continue
            local others=()
            for s in $seeds; do others+=("${kind}_$(target_tag "$t")_seed${s}"); done
            model_args+=(--seed_group "${kind}_$(target_tag "$t")=$(IFS=,; echo "${others[*]}")")
        done
    done
    # shellcheck disable=SC2206
    # the models' predicted decode times, when the pruning config prices them
    table=$(latency_table "$prune_config"); [ -n "$table" ] && model_args+=(--latency_table "$table")
    report_args=("${model_args[@]}" --test_sets $test_sets \
        --data_dir "$dump" --decode_name "$inference_tag" --inference_config "$inference_config" \
        --latency_set "$latency_set" --latency_utts "$latency_utts" --threads 1 \
        --fast_decoder "$fast_decoder" --data_format "$data_format" \
        "${published[@]}" --output "${exp}/RESULTS.md" --json "${exp}/results.json")
    # stale when a scored input changed or the report would be asked something else
    if up_to_date "${exp}/RESULTS.md" "${results[@]}" \
            && [ "$(cat "${exp}/report.args" 2>/dev/null)" = "${report_args[*]}" ]; then
        log "${exp}/RESULTS.md: complete, skipped"
    else
        python -m espnet_prune.recipe.report "${report_args[@]}"
        echo "${report_args[*]}" > "${exp}/report.args"
    fi
    cp "${exp}/RESULTS.md" RESULTS.md
    # the plots RESULTS.md links to (relative links), beside it
    for png in "${exp}"/*.png; do [ -f "$png" ] && cp "$png" .; done
    cat RESULTS.md
}
