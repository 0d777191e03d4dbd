"""Recipe helpers called by egs2/librispeech_prune/asr1/run.sh."""
