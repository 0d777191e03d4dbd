# Stages 2-4 of run.sh (sourced): features, tokens, the baseline (teacher). Each skips what
# is complete and up to date.

features_stage() {  # stage 2: fbank features of every set, length-filtered training set
    local s
    for s in "$train_set" "$valid_set" $test_sets; do
        if [ -f "${dump}/${s}/.done" ] && up_to_date "${dump}/${s}/.done" "${data}/${s}/wav.scp" "${data}/${s}/text"; then
            log "${dump}/${s}: complete, skipped"; continue
        fi
        python -m espnet_prune.data.features extract "${data}/${s}" "${dump}/${s}" --nj "$nj" --n_mels "$n_mels"
    done
    if up_to_date "${train_dump}/feats.scp" "${dump}/${train_set}/.done"; then
        log "${train_dump}: complete, skipped"
    else
        python -m espnet_prune.data.features filter "${dump}/${train_set}" "${train_dump}" \
            --min_frames "$min_frames" --max_frames "$max_frames"
    fi
}

tokens_stage() {  # stage 3: sentencepiece model, token list, text shape files
    local d
    if up_to_date "$bpemodel" "${train_dump}/text"; then
        log "${bpemodel}: complete, skipped"
    else
        rm -f "$bpemodel"
        python -m espnet_prune.recipe.tokens train --text "${train_dump}/text" --out_dir "$token_dir" \
            --vocab_size "$vocab_size" --model_type "$bpe_type"
    fi
    for d in "$train_dump" "${dump}/${valid_set}"; do
        if ! up_to_date "${d}/text_shape.bpe" "$bpemodel" "${d}/text"; then
            python -m espnet_prune.recipe.tokens shape --bpemodel "$bpemodel" --token_list "$token_list" \
                --text "${d}/text" --output "${d}/text_shape.bpe"
        fi
    done
}

baseline_stage() {  # stage 4: the dense baseline, exported as a plain model (the teacher)
    local avg
    if up_to_date "${baseline}/final/model.pth" "$train_config" "$bpemodel"; then
        log "${baseline}/final: complete, skipped"
    else
        train "$baseline" "$train_config"
        # ESPnet averages the n-best checkpoints at the end of training
        avg=$(ls -t "${baseline}"/valid.acc.ave.pth "${baseline}"/valid.*.ave.pth 2>/dev/null | head -n 1)
        python -m espnet_prune.recipe.steps export --config "${baseline}/config.yaml" \
            --model "${avg:-${baseline}/latest.pth}" --output_dir "${baseline}/final"
    fi
}
