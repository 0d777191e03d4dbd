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
family=false              # one pruning run trains every --prune_targets size at once (nested sizes,
                          # espnet_prune/family.py); each is shrunk from it and fine-tuned
decode_bound=""           # e.g. 0.45: each pruned model also decodes in at most 1 - 0.45 of the dense
                          # model's time, as the prune config's model_conf.latency_table prices it
control=true              # train the equal-budget dense control (baseline_control)
baselines=""              # same-size baselines, any of: scratch magnitude layerdrop
seeds=""                  # more training seeds, e.g. "1 2": the pruned (and scratch) model of every
seed_targets="0.5"        # --seed_targets target is trained again with each (prune_params0.5_seed1, ...)
train_jobs=2              # training runs at once in stages 5-7 (cores are split between them)
test_sets=""
n_mels=80
vocab_size=""
bpe_type=unigram
min_frames=10
max_frames=3000
latency_utts=100          # test utterances timed by the report (encoder latency, whole decodes)
latency_set=""            # the set they come from (default: the first test* of --test_sets, else its last)
fast_decoder=true         # decode Transformer decoders with espnet_prune's fast exact decoder
train_args=""             # extra arguments for every training run
# mini corpus size
mini_n_train=1500
mini_n_dev=500
mini_n_test=1000
mini_seed=0
mini_n_ood=0              # > 0: also the out-of-distribution sets ood, ood_noisy (add them to --test_sets)
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
. local/lib.sh        # targets, freshness, ESPnet training, the training job pool
. local/teacher.sh    # an existing ESPnet model as the teacher
. local/prepare.sh    # stages 2-4
. local/models.sh     # stages 5-7: one function per training job
. local/evaluate.sh   # stages 8-9

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
if [ -z "$latency_set" ]; then  # time in-domain test audio, not dev or an out-of-distribution set
    for s in $test_sets; do [[ $s == test* ]] && { latency_set=$s; break; }; done
    latency_set=${latency_set:-${test_sets##* }}
fi
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

# ---------------------------------------------------------------- checks before any stage
# every problem of the options, the configs and earlier stages' outputs, named, before any work
targets_checked=(); for t in $prune_targets; do targets_checked+=("$(parse_target "$t")"); done
seed_targets_checked=(); [ -n "$seeds" ] && for t in $seed_targets; do seed_targets_checked+=("$(parse_target "$t")"); done
fbank=true; [ "$teacher_mode" = true ] && fbank=false
# it prints the pruning runs of stage 5, "TAG KIND:VALUE..." a line: one per target, or one family
# shellcheck disable=SC2086
pruning_runs=$(python -m espnet_prune.recipe.preflight --stage "$stage" --stop_stage "$stop_stage" --nj "$nj" \
    --ngpu "$ngpu" --num_nodes "$num_nodes" --train_jobs "$train_jobs" --control "$control" \
    --finetune "$finetune" --cmd_backend "$cmd_backend" --fbank "$fbank" --family "$family" \
    --decode_bound "$decode_bound" --seeds $seeds --seed_targets "${seed_targets_checked[@]}" \
    --prune_targets "${targets_checked[@]}" --baselines $baselines \
    --train_config "$train_config" --prune_config "$prune_config" --finetune_config "$finetune_config" \
    --inference_config "$inference_config" --data "$data" --train_set "$train_set" \
    --valid_set "$valid_set" --test_sets $test_sets --latency_set "$latency_set" --train_dump "$train_dump" --bpemodel "$bpemodel" \
    --baseline "$baseline" --exp "$exp" --control_dir "$control_dir") || exit 1
family_run=""; [ "$family" = true ] && family_run=${exp}/prune_${pruning_runs%% *}  # its members' source

# ---------------------------------------------------------------- stages
if runs 1 && { [ "$teacher_mode" = false ] || [ -z "$dump_dir" ]; }; then
    banner 1 "data preparation (${dataset})"
    local/data.sh --dataset "$dataset" --data "$data" --nj "$nj" \
        --mini_n_train "$mini_n_train" --mini_n_dev "$mini_n_dev" --mini_n_test "$mini_n_test" --mini_seed "$mini_seed" \
        --mini_n_ood "$mini_n_ood"
fi

if [ "$teacher_mode" = true ]; then
    [ "$teacher_data_later" = true ] && check_teacher with_data
    [ "$stage" -le 4 ] && log "stages 2-4 skipped: the teacher ${teacher_config} brings its frontend, tokens and weights"
    [ "$stop_stage" -ge 5 ] && prepare_teacher
else
    if runs 2; then banner 2 "fbank features (${n_mels} mel bins) and length filtering"; features_stage; fi
    if runs 3; then banner 3 "sentencepiece ${bpe_type} tokens (vocabulary ${vocab_size}) and text shapes"; tokens_stage; fi
    if runs 4; then banner 4 "baseline (teacher) training: ${train_config}"; baseline_stage; fi
fi

omp_threads_given=${OMP_NUM_THREADS-}
if runs 5; then
    banner 5 "pruning: targets ${prune_targets} (teacher ${baseline}/final)$( [ "$control" = true ] && echo '; equal-budget control')"
    n_jobs=$(( $(wc -l <<< "$pruning_runs") + $(wc -w <<< "$seeds") * $(wc -w <<< "$seed_targets") ))
    [ "$control" = true ] && n_jobs=$((n_jobs + 1))
    export OMP_NUM_THREADS=${OMP_NUM_THREADS_TRAIN:-$(threads_for "$n_jobs")}
    while read -r tag targets; do
        # shellcheck disable=SC2086
        start_job "prune ${tag}" prune_job "${exp}/prune_${tag}" "" $targets
    done <<< "$pruning_runs"
    for s in $seeds; do
        for t in $seed_targets; do
            start_job "prune $(target_tag "$t") seed ${s}" prune_job "${exp}/prune_$(target_tag "$t")_seed${s}" "$s" "$(parse_target "$t")"
        done
    done
    [ "$control" = true ] && start_job "control" control_job
    wait_jobs
fi

if runs 6; then
    banner 6 "shrink pruned models$( [ "$finetune" = true ] && echo ' and fine-tune them with distillation')"
    export OMP_NUM_THREADS=${OMP_NUM_THREADS_TRAIN:-$(threads_for "$(wc -w <<< "$prune_targets")")}
    if [ "$family" = true ]; then  # every member from the family's gated model
        for t in $prune_targets; do start_job "family $t" family_job "$t"; done
    else
        for t in $prune_targets; do start_job "shrink $t" shrink_job "$t"; done
    fi
    for s in $seeds; do for t in $seed_targets; do start_job "shrink $t seed $s" shrink_job "$t" "$s"; done; done
    wait_jobs
fi

if runs 7 && [ -n "$baselines" ]; then
    banner 7 "same-size baselines: ${baselines} (targets ${prune_targets})"
    export OMP_NUM_THREADS=${OMP_NUM_THREADS_TRAIN:-$(threads_for $(( $(wc -w <<< "$prune_targets") * $(wc -w <<< "$baselines") )))}
    # the longest jobs first (scratch models train to convergence; those with more seeds
    # first), the fine-tunings fill in
    if [[ " $baselines " == *" scratch "* ]]; then
        seeded_tags=" "
        for t in $seed_targets; do
            [ -n "$seeds" ] || break
            start_job "scratch $t" same_size_job scratch "$t"
            for s in $seeds; do start_job "scratch $t seed $s" same_size_job scratch "$t" "$s"; done
            seeded_tags+="$(target_tag "$t") "
        done
        for t in $prune_targets; do
            [[ $seeded_tags == *" $(target_tag "$t") "* ]] || start_job "scratch $t" same_size_job scratch "$t"
        done
    fi
    for t in $prune_targets; do
        for b in $baselines; do [ "$b" = scratch ] || start_job "$b $t" same_size_job "$b" "$t"; done
    done
    wait_jobs
fi
if [ -n "$omp_threads_given" ]; then export OMP_NUM_THREADS=$omp_threads_given; else unset OMP_NUM_THREADS; fi

# NAME=DIR of every model stages 8-9 evaluate
models=("baseline=${baseline}/final")
[ "$teacher_mode" = true ] && models=("teacher=${baseline}/final")
[ "$control" = true ] && models+=("baseline_control=${control_dir}/final")
for t in $prune_targets; do
    tag=$(target_tag "$t")
    if [ "$family" = true ]; then  # each member fine-tuned and as shrunk, and a separate run's twin if any
        models+=("family_${tag}=${exp}/family_${tag}/final")
        [ "$finetune" = true ] && models+=("family_${tag}_shrunk=${exp}/family_${tag}/shrunk")
        [ -f "${exp}/prune_${tag}/final/model.pth" ] && models+=("prune_${tag}=${exp}/prune_${tag}/final")
    else
        models+=("prune_${tag}=${exp}/prune_${tag}/final")
    fi
    for b in $baselines; do models+=("${b}_${tag}=${exp}/${b}_${tag}/final"); done
done
for s in $seeds; do
    for t in $seed_targets; do
        tag=$(target_tag "$t")
        models+=("prune_${tag}_seed${s}=${exp}/prune_${tag}_seed${s}/final")
        [[ " $baselines " == *" scratch "* ]] && models+=("scratch_${tag}_seed${s}=${exp}/scratch_${tag}_seed${s}/final")
    done
done

if runs 8; then banner 8 "decoding ${test_sets} with ${inference_config} (${nj} jobs, fast decoder: ${fast_decoder})"; decode_stage; fi
if runs 9; then banner 9 "scoring and report"; report_stage; fi
log "finished stages ${stage}..${stop_stage}"
