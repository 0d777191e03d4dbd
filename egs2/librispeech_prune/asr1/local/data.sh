#!/usr/bin/env bash
# Stage 1: Kaldi data dirs (wav.scp, text, utt2spk, spk2utt, utt2dur) under $data.
#   mini:            synthesize the TTS corpus (data/mini/{train,dev,test}); with --mini_n_ood N
#                    also the out-of-distribution sets data/mini/{ood,ood_noisy} (unseen voices
#                    and speaking rates; a reverberant copy with pink noise at 5-10 dB SNR)
#   librispeech_100: download + prepare train-clean-100, dev/test clean/other; dev = dev_clean + dev_other
#   librispeech:     the same with all 960 h of training data
set -euo pipefail
log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh) $*" >&2; }

dataset=mini
data=data/mini
nj=2
mini_n_train=1500
mini_n_dev=150
mini_n_test=200
mini_seed=0
mini_n_ood=0
while [ $# -gt 0 ]; do
    key=${1#--}; [ $# -ge 2 ] || { log "missing value for $1"; exit 1; }
    declare -p "$key" >/dev/null 2>&1 || { log "unknown option $1"; exit 1; }
    printf -v "$key" '%s' "$2"; shift 2
done
. ./db.sh

case $dataset in
    mini)
        # restartable by itself: a complete corpus with the same settings is left alone
        python -m espnet_prune.data.mini_corpus --out_dir "$data" --nj "$nj" --seed "$mini_seed" \
            --n_train "$mini_n_train" --n_dev "$mini_n_dev" --n_test "$mini_n_test"
        if [ "$mini_n_ood" -gt 0 ]; then
            python -m espnet_prune.data.mini_corpus.ood --corpus_dir "$data" --n_utts "$mini_n_ood" --nj "$nj"
        fi
        ;;
    librispeech_100|librispeech)
        subsets="dev-clean dev-other test-clean test-other train-clean-100"
        [ "$dataset" = librispeech ] && subsets="$subsets train-clean-360 train-other-500"
        for subset in $subsets; do
            if [ -f "${data}/${subset//-/_}/text" ]; then
                log "${data}/${subset//-/_}: prepared, skipped"; continue
            fi
            python -m espnet_prune.data.librispeech download --dl_dir "$LIBRISPEECH" --subsets "$subset"
            python -m espnet_prune.data.librispeech prepare --libri_dir "${LIBRISPEECH}/LibriSpeech" \
                --subsets "$subset" --out_dir "$data"
        done
        [ -f "${data}/dev/text" ] || python -m espnet_prune.recipe.steps combine --dst "${data}/dev" \
            "${data}/dev_clean" "${data}/dev_other"
        if [ "$dataset" = librispeech ] && [ ! -f "${data}/train_960/text" ]; then
            python -m espnet_prune.recipe.steps combine --dst "${data}/train_960" \
                "${data}/train_clean_100" "${data}/train_clean_360" "${data}/train_other_500"
        fi
        ;;
    *) log "unknown dataset $dataset"; exit 1 ;;
esac
log "data dirs ready under ${data}"
