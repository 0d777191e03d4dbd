# Environment for the recipe: the project's virtualenv and offline-friendly settings.
MAIN_ROOT=${MAIN_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
if [ -f "${MAIN_ROOT}/.venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    . "${MAIN_ROOT}/.venv/bin/activate"
fi
export PYTHONPATH="${MAIN_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONIOENCODING=UTF-8
export NLTK_DATA="${NLTK_DATA:-${MAIN_ROOT}/.venv/nltk_data}"
[ -d "${NLTK_DATA}" ] || python3 -m espnet_prune.offline "${NLTK_DATA}" >/dev/null
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
