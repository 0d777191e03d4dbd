# Stage 5's teacher when it is an existing ESPnet model (run.sh --teacher_config, sourced):
# named checks before any work, the import and the shape files the trainer needs.

check_teacher() {  # check_teacher [with_data]: named errors before any work
    local dirs=() s
    if [ "${1:-}" = with_data ]; then for s in "$train_set" "$valid_set" $test_sets; do dirs+=(--data_dir "${dump}/${s}"); done; fi
    python -m espnet_prune.recipe.teacher check "${teacher_opts[@]}" --prune_config "$prune_config" \
        --max_unk_rate "$max_unk_rate" "${dirs[@]}" || exit 1
}

prepare_teacher() {  # import the teacher, make the shape files (each only when missing or stale)
    local s
    speech_type=$(python -m espnet_prune.recipe.teacher speech_type --data_dir "$train_dump")
    if up_to_date "${baseline}/final/model.pth" "$teacher_config" "$teacher_model"; then
        log "${baseline}/final: teacher already imported"
    else
        python -m espnet_prune.recipe.teacher import "${teacher_opts[@]}" --output_dir "${baseline}/final"
        log "imported the teacher ${teacher_config} (${teacher_model}) into ${baseline}/final"
    fi
    for s in "$train_set" "$valid_set"; do
        if ! up_to_date "${shape_dir}/${s}/text_shape.bpe" "${dump}/${s}/wav.scp" "${dump}/${s}/text" "${baseline}/final/model.pth"; then
            python -m espnet_prune.recipe.teacher shapes --teacher_dir "${baseline}/final" \
                --data_dir "${dump}/${s}" --out_dir "${shape_dir}/${s}"
            log "${shape_dir}/${s}: speech_shape (samples) and text_shape.bpe written"
        fi
    done
}
