#!/usr/bin/env bash
# Structured pruning of a Conformer ASR model, end to end (Kaldi/ESPnet-style stages).
#
#   ./run.sh --dataset mini                       # embedded TTS corpus, CPU, ~20 min
#   ./run.sh --dataset librispeech_100 --ngpu 1 --nj 16
#   ./run.sh --stage 5 --stop_stage 9 --prune_targets "0.3 0.5 macs:0.5" --baselines "scratch magnitude layerdrop"
#   ./run.sh --teacher_config exp/asr/config.yaml --teacher_model exp/asr/valid.acc.ave.pth \
#       --data_format raw --dump_dir dump/raw --train_set train --valid_set dev --test_sets "test"
#   ./run.sh --dataset librispeech --ngpu 4                      # one node, 4 GPUs (DDP)
#   cmd_backend=slurm slurm_opts="-p gpu" ./run.sh --dataset librispeech --ngpu 4 --num_nodes 2
#
# Stages: 1 data, 2 features, 3 tokens, 4 baseline (teacher), 5 prune (+ equal-budget control),
# 6 shrink (+ fine-tune), 7 same-size baselines, 8 decode, 9 score and report
# (with --teacher_config: stages 5-9 on that model). Every stage skips work that is already complete.
set -euo pipefail

log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (run.sh) $*" >&2; }
banner() { log "===== Stage $1: $2 ====="; }

# ---------------------------------------------------------------- options
stage=1
stop_stage=9
dataset=mini              # mini | librispeech_100 | librispeech
ngpu=0                    # GPUs per node for training (> 1: DDP, one process per GPU)
num_nodes=1               # > 1: multi-node DDP through Slurm (needs cmd_backend=slurm, see cmd.sh)
nj=2                      # parallel jobs for features and decoding
conf_dir=""               # default: conf/mini for mini, conf otherwise
train_config=""           # default: ${conf_dir}/train_asr_conformer.yaml
prune_config=""
finetune_config=""
inference_config=""
prune_targets="0.5"       # space-separated: "0.5" (of --target_kind) or "KIND:0.5", KIND one of
                          # params macs (whole model) encoder_params encoder_macs block_params block_macs
target_kind=params        # kind of a bare number in --prune_targets (params: the whole model)
finetune=true             # fine-tune each shrunk model with distillation
control=true              # train the equal-budget dense control (baseline_control)
baselines=""              # same-size baselines, any of: scratch magnitude layerdrop
train_jobs=2              # training runs at once in stages 5-7 (cores are split between them)
test_sets=""
n_mels=80
vocab_size=""
bpe_type=unigram
min_frames=10
max_frames=3000
latency_utts=100          # test utterances timed by the report (encoder latency, whole decodes)
fast_decoder=true         # decode Transformer decoders with espnet_prune's fast exact decoder
train_args=""             # extra arguments for every training run
# mini corpus size
mini_n_train=1500
mini_n_dev=500
mini_n_test=1000
mini_seed=0
# prune a model trained by ESPnet's own recipes (README "Prune your existing ESPnet model")
teacher_config=""         # its config.yaml: architecture, frontend, normalization, tokens
teacher_model=""          # its weights, e.g. valid.acc.ave.pth
teacher_root=""           # directory the relative paths of teacher_config are relative to
data_format=fbank         # fbank: our features (stages 2-3); raw: wav.scp + text (needs a teacher)
dump_dir=""               # raw: ESPnet's dump/raw (default: data/<dataset>, stage 1's output)
train_set=""
valid_set=""
exp_dir=""                # default: exp/<dataset>, exp/<dataset>_teacher with a teacher
max_unk_rate=0.01         # raw: largest fraction of the data's tokens the teacher maps to <unk>

. ./path.sh
. ./cmd.sh
. ./db.sh

while [ $# -gt 0 ]; do
    case $1 in
        --help|-h) sed -n '2,14p' "$0"; exit 0 ;;
        --*=*) key=${1%%=*}; key=${key#--}; val=${1#*=}; shift ;;
        --*) key=${1#--}; [ $# -ge 2 ] || { log "missing value for $1"; exit 1; }; val=$2; shift 2 ;;
        *) log "unexpected argument: $1"; exit 1 ;;
    esac
    if ! declare -p "$key" >/dev/null 2>&1 || [[ ! $key =~ ^[a-z_0-9]+$ ]]; then
        log "unknown option --$key"; exit 1
    fi
    printf -v "$key" '%s' "$val"
done

case $dataset in
    mini)
        train_set=${train_set:-train}; valid_set=${valid_set:-dev}; test_sets=${test_sets:-"dev test"}
        conf_dir=${conf_dir:-conf/mini}; vocab_size=${vocab_size:-100} ;;
    librispeech_100)
        train_set=${train_set:-train_clean_100}; valid_set=${valid_set:-dev}; test_sets=${test_sets:-"dev_clean dev_other test_clean test_other"}
        conf_dir=${conf_dir:-conf}; vocab_size=${vocab_size:-5000} ;;
    librispeech)
        train_set=${train_set:-train_960}; valid_set=${valid_set:-dev}; test_sets=${test_sets:-"dev_clean dev_other test_clean test_other"}
        conf_dir=${conf_dir:-conf}; vocab_size=${vocab_size:-5000} ;;
    *) log "unknown --dataset $dataset (mini, librispeech_100, librispeech)"; exit 1 ;;
esac
train_config=${train_config:-${conf_dir}/train_asr_conformer.yaml}
prune_config_name=prune_asr_conformer; [ -n "$teacher_config" ] && prune_config_name=prune_from_teacher
prune_config=${prune_config:-${conf_dir}/${prune_config_name}.yaml}
finetune_config=${finetune_config:-${conf_dir}/finetune_asr_conformer.yaml}
inference_config=${inference_config:-${conf_dir}/decode_asr.yaml}
data=data/${dataset}
dump=dump/${dataset}/fbank
exp=${exp_dir:-exp/${dataset}}
token_dir=${data}/token_list/${bpe_type}${vocab_size}
bpemodel=${token_dir}/bpe.model
token_list=${token_dir}/tokens.txt
train_dump=${dump}/${train_set}_filt
baseline=${exp}/asr_baseline
inference_tag=$(basename "${inference_config}" .yaml)

# "0.5" -> params:0.5 (--target_kind); tag "params0.5"
parse_target() { local t=$1; [[ $t == *:* ]] || t=${target_kind}:$t; echo "$t"; }
target_tag() { local t; t=$(parse_target "$1"); echo "${t%%:*}${t#*:}"; }

# is $1 newer than (or as new as) all of $2...? (missing $1 -> no)
up_to_date() { local out=$1; shift; [ -e "$out" ] || return 1; local f; for f in "$@"; do [ "$f" -nt "$out" ] && return 1; done; return 0; }

# ---------------------------------------------------------------- checks before any stage
# check every target before any stage runs (kind and value, as model_conf.target will)
targets_checked=(); for t in $prune_targets; do targets_checked+=("$(parse_target "$t")"); done
python -m espnet_prune.targets "${targets_checked[@]}" || exit 1
for b in $baselines; do
    case $b in scratch|magnitude|layerdrop) ;; *) log "unknown --baselines entry '$b' (scratch, magnitude, layerdrop)"; exit 1 ;; esac
done
[[ $train_jobs =~ ^[1-9][0-9]*$ ]] || { log "--train_jobs must be a positive integer, got '$train_jobs'"; exit 1; }
[[ $control =~ ^(true|false)$ ]] || { log "--control must be true or false, got '$control'"; exit 1; }

# ---------------------------------------------------------------- an existing ESPnet teacher, raw data
# With --teacher_config the teacher is imported (copied) into ${exp}/asr_teacher/final and stages
# 2-4 do not apply; the data are ESPnet's dump/raw/<set> dirs (wav.scp, text), the shape files
# the trainer needs are made in ${exp}/data/<set>. Everything is checked before any stage runs.
teacher_mode=false
speech_file=feats.scp; speech_type=kaldi_ark
if [ -n "$teacher_config" ] || [ -n "$teacher_model" ] || [ "$data_format" = raw ]; then
    teacher_mode=true
    if [ -z "$teacher_config" ] || [ -z "$teacher_model" ]; then
        log "--teacher_config and --teacher_model go together (and --data_format raw needs them)"; exit 1
    fi
    if [ "$data_format" != raw ]; then
        log "--teacher_config needs --data_format raw: an ESPnet model reads raw audio through its own frontend"; exit 1
    fi
    exp=${exp_dir:-exp/${dataset}_teacher}
    dump=${dump_dir:-${data}}
    train_dump=${dump}/${train_set}
    baseline=${exp}/asr_teacher
    token_list=${baseline}/final/tokens.txt
    bpemodel=${baseline}/final/bpe.model
    shape_dir=${exp}/data
    speech_file=wav.scp
    if [ "$control" = true ] || [ -n "$baselines" ]; then
        # both are trained from our training config (fbank features, our tokens)
        log "an imported teacher: no equal-budget control or same-size baselines (--control false)"
        control=false; baselines=""
    fi
fi
teacher_opts=(--teacher_config "$teacher_config" --teacher_model "$teacher_model")
[ -n "$teacher_root" ] && teacher_opts+=(--teacher_root "$teacher_root")

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

# stage 1 makes the data unless --dump_dir points at existing ones: check the data after it
teacher_data_later=false
if [ "$teacher_mode" = true ]; then
    if [ -z "$dump_dir" ] && [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
        teacher_data_later=true; check_teacher
    else
        check_teacher with_data
    fi
    train_data_opts=(
        --train_data_path_and_name_and_type "${train_dump}/wav.scp,speech,SPEECH_TYPE"
        --train_data_path_and_name_and_type "${train_dump}/text,text,text"
        --train_shape_file "${shape_dir}/${train_set}/speech_shape" --train_shape_file "${shape_dir}/${train_set}/text_shape.bpe"
        --valid_data_path_and_name_and_type "${dump}/${valid_set}/wav.scp,speech,SPEECH_TYPE"
        --valid_data_path_and_name_and_type "${dump}/${valid_set}/text,text,text"
        --valid_shape_file "${shape_dir}/${valid_set}/speech_shape" --valid_shape_file "${shape_dir}/${valid_set}/text_shape.bpe"
    )
else
    train_data_opts=(
        --token_list "$token_list" --token_type bpe --bpemodel "$bpemodel"
        --input_size "$n_mels" --normalize global_mvn
        --normalize_conf "stats_file=${dump}/${train_set}/feats_stats.npz"
        --train_data_path_and_name_and_type "${train_dump}/feats.scp,speech,kaldi_ark"
        --train_data_path_and_name_and_type "${train_dump}/text,text,text"
        --train_shape_file "${train_dump}/feats_shape" --train_shape_file "${train_dump}/text_shape.bpe"
        --valid_data_path_and_name_and_type "${dump}/${valid_set}/feats.scp,speech,kaldi_ark"
        --valid_data_path_and_name_and_type "${dump}/${valid_set}/text,text,text"
        --valid_shape_file "${dump}/${valid_set}/feats_shape" --valid_shape_file "${dump}/${valid_set}/text_shape.bpe"
    )
fi

control_dir=${exp}/baseline_control
problems=()
runs() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }  # does stage $1 run?
for v in stage stop_stage nj; do [[ ${!v} =~ ^[0-9]+$ ]] || problems+=("--${v} ${!v}: not a whole number"); done
[[ $ngpu =~ ^[0-9]+$ ]] || problems+=("--ngpu ${ngpu}: not a whole number")
[[ $num_nodes =~ ^[1-9][0-9]*$ ]] || problems+=("--num_nodes ${num_nodes}: must be a whole number >= 1")
if [[ $num_nodes =~ ^[0-9]+$ ]] && [ "$num_nodes" -gt 1 ] && [ "$cmd_backend" != slurm ]; then
    problems+=("--num_nodes ${num_nodes}: multi-node training needs cmd_backend=slurm (now '${cmd_backend}', see cmd.sh)")
fi
case $cmd_backend in local|slurm) ;; *) problems+=("cmd_backend=${cmd_backend}: must be local or slurm (cmd.sh)") ;; esac
if [ ${#problems[@]} -eq 0 ]; then
    # the configs of the stages that run, and what earlier stages left for them
    need() { [ -e "$1" ] || problems+=("$1: not found ($2)"); }
    fbank=true; [ "$teacher_mode" = true ] && fbank=false
    { { [ "$fbank" = true ] && runs 4; } || { [ "$control" = true ] && runs 5; } || { [[ " $baselines " == *" scratch "* ]] && runs 7; }; } &&
        need "$train_config" "--train_config"
    if runs 5; then
        need "$prune_config" "--prune_config"
        # pruning options only: the architecture comes from the teacher
        [ -e "$prune_config" ] && ! err=$(python -m espnet_prune.recipe.teacher check_prune_config \
            --prune_config "$prune_config" 2>&1) && problems+=("${err#TeacherError: }")
    fi
    { { runs 6 && [ "$finetune" = true ]; } || { [ "$control" = true ] && runs 5; } || { [ -n "$baselines" ] && runs 7; }; } &&
        need "$finetune_config" "--finetune_config"
    { runs 8 || runs 9; } && need "$inference_config" "--inference_config"
    if [ "$stage" -ge 2 ] && [ "$stop_stage" -ge "$stage" ]; then
        first=$stage
        if [ "$fbank" = true ]; then
            [ "$first" -eq 2 ] && for s in "$train_set" "$valid_set" $test_sets; do need "${data}/${s}/wav.scp" "made by stage 1"; done
            [ "$first" -eq 3 ] && need "${train_dump}/text" "made by stage 2"
            if [ "$first" -ge 4 ] && [ "$first" -le 8 ]; then
                need "${train_dump}/feats.scp" "made by stage 2"; need "$bpemodel" "made by stage 3"
            fi
            [ "$first" -ge 5 ] && need "${baseline}/final/model.pth" "the baseline, made by stage 4"
        fi
        for t in $prune_targets; do
            p=${exp}/prune_$(target_tag "$t")
            [ "$first" -eq 6 ] && need "${p}/final_gated/model.pth" "made by stage 5"
            [ "$first" -ge 7 ] && need "${p}/final/model.pth" "made by stage 6"
        done
        [ "$first" -ge 8 ] && [ "$control" = true ] && need "${control_dir}/final/model.pth" "the control, made by stage 5"
        for t in $prune_targets; do
            for b in $baselines; do
                [ "$first" -ge 8 ] && need "${exp}/${b}_$(target_tag "$t")/final/model.pth" "made by stage 7"
            done
        done
    fi
fi
if [ ${#problems[@]} -gt 0 ]; then
    for p in "${problems[@]}"; do log "error: $p"; done
    exit 1
fi

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
    log "training ${out} (log: ${out}/train.log)"
    # shellcheck disable=SC2086
    if ! ${train_cmd} --gpu "$ngpu" --num_nodes "$num_nodes" "${out}/train.log" python -m espnet_prune.bin.asr_train \
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

# ---------------------------------------------------------------- stages
if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ] && { [ "$teacher_mode" = false ] || [ -z "$dump_dir" ]; }; then
    banner 1 "data preparation (${dataset})"
    local/data.sh --dataset "$dataset" --data "$data" --nj "$nj" \
        --mini_n_train "$mini_n_train" --mini_n_dev "$mini_n_dev" --mini_n_test "$mini_n_test" --mini_seed "$mini_seed"
fi

if [ "$teacher_mode" = true ]; then
    [ "$teacher_data_later" = true ] && check_teacher with_data
    [ "$stage" -le 4 ] && log "stages 2-4 skipped: the teacher ${teacher_config} brings its frontend, tokens and weights"
    [ "$stop_stage" -ge 5 ] && prepare_teacher
fi

if [ "$teacher_mode" = false ] && [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
    banner 2 "fbank features (${n_mels} mel bins) and length filtering"
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
fi

if [ "$teacher_mode" = false ] && [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
    banner 3 "sentencepiece ${bpe_type} tokens (vocabulary ${vocab_size}) and text shapes"
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
fi

if [ "$teacher_mode" = false ] && [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
    banner 4 "baseline (teacher) training: ${train_config}"
    if up_to_date "${baseline}/final/model.pth" "$train_config" "$bpemodel"; then
        log "${baseline}/final: complete, skipped"
    else
        train "$baseline" "$train_config"
        # ESPnet averages the n-best checkpoints at the end of training
        avg=$(ls -t "${baseline}"/valid.acc.ave.pth "${baseline}"/valid.*.ave.pth 2>/dev/null | head -n 1)
        python -m espnet_prune.recipe.steps export --config "${baseline}/config.yaml" \
            --model "${avg:-${baseline}/latest.pth}" --output_dir "${baseline}/final"
    fi
fi

# ---------------------------------------------------------------- comparison models
epochs() { python -m espnet_prune.recipe.same_size epochs "$@"; }
# whole-model parameters of a pruned model (from its shrink summary)
pruned_params() { python -c 'import json,sys; print(json.load(open(sys.argv[1]))["params_shrunk_model"])' "$1/shrunk/summary.json"; }

prune_job() {  # prune_job TARGET: gated training distilled from the teacher -> final_gated
    local target tag out
    target=$(parse_target "$1"); tag=$(target_tag "$1"); out=${exp}/prune_${tag}
    if up_to_date "${out}/final_gated/model.pth" "${baseline}/final/model.pth" "$prune_config"; then
        log "${out}: complete, skipped"; return 0
    fi
    # the teacher's architecture + the pruning options, with the teacher's files and the target
    mkdir -p "$out"
    python -m espnet_prune.recipe.teacher prune_config --teacher_dir "${baseline}/final" \
        --prune_config "$prune_config" --target "$target" --output "${out}/prune_config.yaml"
    train "$out" "${out}/prune_config.yaml"
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
    python -m espnet_prune.recipe.steps finetune_config --shrunk_config "${out}/shrunk/config.yaml" \
        --finetune_config "$finetune_config" --output "${ft}/train.yaml"
    train "$ft" "${ft}/train.yaml" --init_param "${out}/shrunk/model.pth" --max_epoch "$n_epochs" \
        --model_conf "teacher_config=${baseline}/final/config.yaml" \
        --model_conf "teacher_model_file=${baseline}/final/model.pth" "$@"
    export_best "$ft" "${out}/final"
}

shrink_job() {  # shrink_job TARGET: final_gated -> shrunk (-> fine-tuned final)
    local tag out
    tag=$(target_tag "$1"); out=${exp}/prune_${tag}
    if up_to_date "${out}/shrunk/model.pth" "${out}/final_gated/model.pth"; then
        log "${out}/shrunk: complete, skipped"
    else
        python -m espnet_prune.bin.shrink --asr_train_config "${out}/final_gated/config.yaml" \
            --asr_model_file "${out}/final_gated/model.pth" --output_dir "${out}/shrunk" > /dev/null
        log "${out}/shrunk: $(grep -E '"(params_shrunk_model|params_sparsity)"' "${out}/shrunk/summary.json" | tr -d '\n ')"
    fi
    if [ "$finetune" != true ]; then
        python -m espnet_prune.recipe.steps export --config "${out}/shrunk/config.yaml" \
            --model "${out}/shrunk/model.pth" --output_dir "${out}/final"
        return 0
    fi
    finetune_job "$out" "$(epochs "$finetune_config")"
}

same_size_job() {  # same_size_job METHOD TARGET: a baseline of the pruned model's whole-model size
    local method=$1 tag out n
    tag=$(target_tag "$2"); out=${exp}/${method}_${tag}
    local pruned=${exp}/prune_${tag}
    n=$(pruned_params "$pruned")
    case $method in
        scratch)  # a smaller dense model trained from scratch for the whole budget
            if up_to_date "${out}/final/model.pth" "${pruned}/shrunk/model.pth" "$train_config"; then
                log "${out}: complete, skipped"; return 0
            fi
            mkdir -p "$out"
            python -m espnet_prune.recipe.same_size scratch_config --teacher_dir "${baseline}/final" \
                --train_config "$train_config" --params "$n" --output "${out}/train.yaml" | tail -n 1 > "${out}/size.json"
            train "$out" "${out}/train.yaml" \
                --max_epoch "$(epochs "$train_config" "$prune_config" "$finetune_config")"
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

omp_threads_given=${OMP_NUM_THREADS-}
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

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
    banner 5 "pruning: targets ${prune_targets} (teacher ${baseline}/final)$( [ "$control" = true ] && echo '; equal-budget control')"
    n_jobs=$(wc -w <<< "$prune_targets"); [ "$control" = true ] && n_jobs=$((n_jobs + 1))
    export OMP_NUM_THREADS=${OMP_NUM_THREADS_TRAIN:-$(threads_for "$n_jobs")}
    for t in $prune_targets; do start_job "prune $t" prune_job "$t"; done
    [ "$control" = true ] && start_job "control" control_job
    wait_jobs
fi

if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
    banner 6 "shrink pruned models$( [ "$finetune" = true ] && echo ' and fine-tune them with distillation')"
    export OMP_NUM_THREADS=${OMP_NUM_THREADS_TRAIN:-$(threads_for "$(wc -w <<< "$prune_targets")")}
    for t in $prune_targets; do start_job "shrink $t" shrink_job "$t"; done
    wait_jobs
fi

if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ] && [ -n "$baselines" ]; then
    banner 7 "same-size baselines: ${baselines} (targets ${prune_targets})"
    export OMP_NUM_THREADS=${OMP_NUM_THREADS_TRAIN:-$(threads_for $(( $(wc -w <<< "$prune_targets") * $(wc -w <<< "$baselines") )))}
    for t in $prune_targets; do
        for b in $baselines; do start_job "$b $t" same_size_job "$b" "$t"; done
    done
    wait_jobs
fi
if [ -n "$omp_threads_given" ]; then export OMP_NUM_THREADS=$omp_threads_given; else unset OMP_NUM_THREADS; fi

models=("baseline=${baseline}/final")
[ "$teacher_mode" = true ] && models=("teacher=${baseline}/final")
[ "$control" = true ] && models+=("baseline_control=${control_dir}/final")
for t in $prune_targets; do
    tag=$(target_tag "$t")
    models+=("prune_${tag}=${exp}/prune_${tag}/final")
    for b in $baselines; do models+=("${b}_${tag}=${exp}/${b}_${tag}/final"); done
done

if [ "$stage" -le 8 ] && [ "$stop_stage" -ge 8 ]; then
    banner 8 "decoding ${test_sets} with ${inference_config} (${nj} jobs, fast decoder: ${fast_decoder})"
    for m in "${models[@]}"; do
        dir=${m#*=}
        for s in $test_sets; do
            dec=${dir}/${inference_tag}_${s}
            if up_to_date "${dec}/text" "${dir}/model.pth" "$inference_config"; then
                log "${dec}: complete, skipped"; continue
            fi
            rm -rf "${dec}/logdir"
            n=$(python -m espnet_prune.recipe.steps split_scp --scp "${dump}/${s}/${speech_file}" --nj "$nj" --out_dir "${dec}/logdir")
            # one thread per job unless cores are left over: oversubscribed OpenMP is many times slower
            ${decode_cmd} JOB=1:"$n" "${dec}/logdir/decode.JOB.log" \
                env OMP_NUM_THREADS=$(( $(nproc) / n > 0 ? $(nproc) / n : 1 )) python -m espnet_prune.bin.asr_inference \
                --ngpu 0 --batch_size 1 --config "$inference_config" --fast_decoder "$fast_decoder" \
                --asr_train_config "${dir}/config.yaml" --asr_model_file "${dir}/model.pth" \
                --data_path_and_name_and_type "${dec}/logdir/keys.JOB.scp,speech,${speech_type}" \
                --output_dir "${dec}/logdir/output.JOB"
            parts=(); for ((j = 1; j <= n; j++)); do parts+=("${dec}/logdir/output.${j}/1best_recog/text"); done
            python -m espnet_prune.recipe.steps merge_text --output "${dec}/text" --expect "${dump}/${s}/text" "${parts[@]}"
            log "decoded ${dec}/text"
        done
    done
fi

if [ "$stage" -le 9 ] && [ "$stop_stage" -ge 9 ]; then
    banner 9 "scoring and report"
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
    for t in $prune_targets; do
        tag=$(target_tag "$t"); model_args+=(--train_log "prune_${tag}=${exp}/prune_${tag}/train.log")
        # each pruned model against its same-size baselines, in the paired-bootstrap table
        for b in $baselines; do model_args+=(--pair "prune_${tag}:${b}_${tag}"); done
    done
    # shellcheck disable=SC2206
    report_args=("${model_args[@]}" --test_sets $test_sets \
        --data_dir "$dump" --decode_name "$inference_tag" --inference_config "$inference_config" \
        --latency_set "${test_sets##* }" --latency_utts "$latency_utts" --threads 1 \
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
fi
log "finished stages ${stage}..${stop_stage}"
