# Stages 5-7 of run.sh (sourced): one function per training job. Each skips a job whose
# output is complete and newer than its inputs; stage 5-7 start them in the job pool (lib.sh).

epochs() { python -m espnet_prune.recipe.same_size epochs "$@"; }
# the pruned model of a target: its family member, or its own pruning run
pruned_name() { if [ "$family" = true ]; then echo "family_$(target_tag "$1")"; else echo "prune_$(target_tag "$1")"; fi; }
# a training run's name with seed $2 (none: the config's seed): prune_params0.5 -> prune_params0.5_seed1
seeded() { if [ -n "${2:-}" ]; then echo "$1_seed$2"; else echo "$1"; fi; }
seed_args() { [ -n "${1:-}" ] && echo "--seed $1"; return 0; }
# whole-model parameters of a pruned model (from its shrink summary)
pruned_params() { python -c 'import json,sys; print(json.load(open(sys.argv[1]))["params_shrunk_model"])' "$1/shrunk/summary.json"; }

prune_job() {  # prune_job OUT SEED TARGET...: gated training distilled from the teacher -> OUT/final_gated
    local out=$1 seed=$2; shift 2  # (SEED "": the config's; several targets: a family, every size at once)
    # the teacher's architecture + the pruning options, with the teacher's files and the target
    mkdir -p "$out"
    local bound=(); [ -n "$decode_bound" ] && bound=(--bound "decode:${decode_bound}")
    python -m espnet_prune.recipe.teacher prune_config --teacher_dir "${baseline}/final" \
        --prune_config "$prune_config" --target "$@" "${bound[@]}" --output "${out}/prune_config.new.yaml"
    # rewritten only when the options changed (e.g. --decode_bound): then the run is stale
    if cmp -s "${out}/prune_config.new.yaml" "${out}/prune_config.yaml"; then
        rm -f "${out}/prune_config.new.yaml"
    else
        mv "${out}/prune_config.new.yaml" "${out}/prune_config.yaml"
    fi
    local inputs=("${baseline}/final/model.pth" "$prune_config" "${out}/prune_config.yaml")
    local table; table=$(latency_table "${out}/prune_config.yaml"); [ -n "$table" ] && inputs+=("$table")
    if up_to_date "${out}/final_gated/model.pth" "${inputs[@]}"; then
        log "${out}: complete, skipped"; return 0
    fi
    drop_stale_checkpoint "$out" "${inputs[@]}"
    # shellcheck disable=SC2046
    train "$out" "${out}/prune_config.yaml" $(seed_args "$seed")
    # the gates move until the end: keep the last epoch, not an average
    python -m espnet_prune.recipe.steps export --config "${out}/config.yaml" \
        --model "${out}/latest.pth" --output_dir "${out}/final_gated"
}

control_job() {  # the teacher trained on for as many updates as pruning + fine-tuning
    local out=$control_dir
    if up_to_date "${out}/final/model.pth" "${baseline}/final/model.pth" "$train_config" "$prune_config" "$finetune_config"; then
        log "${out}: complete, skipped"; return 0
    fi
    mkdir -p "$out"
    drop_stale_checkpoint "$out" "${baseline}/final/model.pth" "$train_config" "$prune_config" "$finetune_config"
    python -m espnet_prune.recipe.same_size control_config --train_config "$train_config" \
        --prune_config "$prune_config" --finetune_config "$finetune_config" --output "${out}/train.yaml"
    train "$out" "${out}/train.yaml" --init_param "${baseline}/final/model.pth"
    export_best "$out" "${out}/final"
}

export_best() {  # export_best TRAIN_DIR OUT: ESPnet's n-best average (else the last epoch) -> plain model
    local avg
    avg=$(ls -t "$1"/valid.acc.ave.pth "$1"/valid.*.ave.pth 2>/dev/null | head -n 1)
    # drops training-only state (distillation): a plain ESPnet model
    python -m espnet_prune.bin.shrink --asr_train_config "$1/config.yaml" \
        --asr_model_file "${avg:-$1/latest.pth}" --output_dir "$2" > /dev/null
}

finetune_job() {  # finetune_job DIR EPOCHS [train args]: DIR/shrunk -> distilled fine-tuning -> DIR/final
    local out=$1 n_epochs=$2; shift 2
    local ft=${out}/finetune
    if up_to_date "${out}/final/model.pth" "${out}/shrunk/model.pth" "$finetune_config"; then
        log "${out}/final: complete, skipped"; return 0
    fi
    mkdir -p "$ft"
    drop_stale_checkpoint "$ft" "${out}/shrunk/model.pth" "$finetune_config"
    python -m espnet_prune.recipe.steps finetune_config --shrunk_config "${out}/shrunk/config.yaml" \
        --finetune_config "$finetune_config" --output "${ft}/train.yaml"
    train "$ft" "${ft}/train.yaml" --init_param "${out}/shrunk/model.pth" --max_epoch "$n_epochs" \
        --model_conf "teacher_config=${baseline}/final/config.yaml" \
        --model_conf "teacher_model_file=${baseline}/final/model.pth" "$@"
    export_best "$ft" "${out}/final"
}

shrink_job() {  # shrink_job TARGET [SEED]: final_gated -> shrunk (-> fine-tuned final)
    local out
    out=${exp}/$(seeded "prune_$(target_tag "$1")" "${2:-}")
    shrink_into "$out" "${out}/final_gated"
    finish_job "$out" "${2:-}"
}

family_job() {  # family_job TARGET: one member, shrunk from the family's gated model
    local out
    out=${exp}/family_$(target_tag "$1")
    # the nested rule: a prefix of the family's one ranking, so the members nest
    shrink_into "$out" "${family_run}/final_gated" --target "$(parse_target "$1")"
    finish_job "$out"
}

shrink_into() {  # shrink_into DIR GATED [shrink args]: the gated model GATED -> DIR/shrunk
    local out=$1 gated=$2; shift 2
    if up_to_date "${out}/shrunk/model.pth" "${gated}/model.pth"; then
        log "${out}/shrunk: complete, skipped"; return 0
    fi
    python -m espnet_prune.bin.shrink --asr_train_config "${gated}/config.yaml" \
        --asr_model_file "${gated}/model.pth" --output_dir "${out}/shrunk" "$@" > /dev/null
    log "${out}/shrunk: $(grep -E '"(params_shrunk_model|params_sparsity)"' "${out}/shrunk/summary.json" | tr -d '\n ')"
}

finish_job() {  # finish_job DIR [SEED]: DIR/shrunk -> DIR/final, fine-tuned unless --finetune false
    local out=$1
    if [ "$finetune" != true ]; then
        python -m espnet_prune.recipe.steps export --config "${out}/shrunk/config.yaml" \
            --model "${out}/shrunk/model.pth" --output_dir "${out}/final"
        return 0
    fi
    # shellcheck disable=SC2046
    finetune_job "$out" "$(epochs "$finetune_config")" $(seed_args "${2:-}")
}

same_size_job() {  # same_size_job METHOD TARGET [SEED]: a baseline of the pruned model's whole-model size
    local method=$1 tag out n seed=${3:-}
    tag=$(target_tag "$2"); out=${exp}/$(seeded "${method}_${tag}" "$seed")
    local pruned=${exp}/$(pruned_name "$2")
    n=$(pruned_params "$pruned")
    case $method in
        scratch)  # a smaller dense model trained from scratch as the teacher was: to convergence
                  # when its config converges (patience), else for the pruned model's whole budget
            if up_to_date "${out}/final/model.pth" "${pruned}/shrunk/model.pth" "$train_config"; then
                log "${out}: complete, skipped"; return 0
            fi
            mkdir -p "$out"
            drop_stale_checkpoint "$out" "${pruned}/shrunk/model.pth" "$train_config"
            python -m espnet_prune.recipe.same_size scratch_config --teacher_dir "${baseline}/final" \
                --train_config "$train_config" --params "$n" --output "${out}/train.yaml" \
                --budget_epochs "$(epochs "$train_config" "$prune_config" "$finetune_config")" | tail -n 1 > "${out}/size.json"
            # shellcheck disable=SC2046
            train "$out" "${out}/train.yaml" $(seed_args "$seed")
            export_best "$out" "${out}/final" ;;
        magnitude|layerdrop)  # cut from the teacher, then fine-tuned like the pruned model
            if ! up_to_date "${out}/shrunk/model.pth" "${pruned}/shrunk/model.pth" "${baseline}/final/model.pth"; then
                mkdir -p "$out"
                if [ "$method" = magnitude ]; then
                    python -m espnet_prune.recipe.same_size magnitude --teacher_dir "${baseline}/final" \
                        --prune_config "$prune_config" --params "$n" --output_dir "${out}/shrunk" > /dev/null
                else
                    python -m espnet_prune.recipe.same_size layerdrop --teacher_dir "${baseline}/final" \
                        --params "$n" --output_dir "${out}/shrunk" > /dev/null
                fi
                log "${out}/shrunk: $(tr -d '\n ' < "${out}/shrunk/summary.json")"
            fi
            local extra=()
            # fewer blocks than the teacher: no block-to-block map, prediction-layer distillation only
            [ "$method" = layerdrop ] && extra=(--model_conf "distill_layers=[]")
            finetune_job "$out" "$(epochs "$prune_config" "$finetune_config")" "${extra[@]}" ;;
    esac
}
