# Where corpora live (or get downloaded to).
LIBRISPEECH="${LIBRISPEECH:-downloads}"
