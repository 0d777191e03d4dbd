#!/usr/bin/env bash
# Build a second environment with the OLDEST versions setup.py allows and run a quick
# subset of the tests in it (not part of `make test`: it downloads ~5 GB, torch with CUDA).
#
#   .ci/oldest_env.sh [VENV_DIR]        # default .venv-oldest; PYTHON=python3.10 to pick the interpreter
#
# Every install requirement with a lower bound ("name>=X") is pinned to X ("name==X",
# pip's "lowest-direct" resolution); the other packages resolve as pip chooses. The
# versions installed, the test results and a TensorBoard write/read check are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-oldest}
python=${PYTHON:-python3}
tests=${TESTS:-"tests/test_gates.py tests/test_encoder.py tests/test_inference.py tests/test_pack.py tests/test_ddp.py"}

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# setup.py's install_requires, each "name>=X" as "name==X"
"$python" - "$constraints" <<'EOF'
import re
import sys

import setuptools

captured = {}
setuptools.setup = lambda **kw: captured.update(kw)
exec(compile(open("setup.py").read(), "setup.py", "exec"), {"__name__": "__main__"})
pins = []
for req in captured["install_requires"]:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)\s*", req)
    if m:
        pins.append(f"{m.group(1)}=={m.group(3)}")
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
print("oldest allowed:", " ".join(pins))
EOF

[ -x "${venv}/bin/python" ] || "$python" -m venv "$venv"
"${venv}/bin/python" -m pip install -q 'pip<25'
"${venv}/bin/python" -m pip install -q -c "$constraints" -e '.[test]'
"${venv}/bin/python" -m espnet_prune.offline "${venv}/nltk_data" > /dev/null
echo "installed:"
"${venv}/bin/python" -m pip freeze | grep -iE '^(espnet|torch|torchaudio|tensorboard|numpy|protobuf)==' | sed 's/^/    /'

echo "tensorboard: write and read one scalar"
OMP_NUM_THREADS=1 "${venv}/bin/python" - <<'EOF'
import tempfile

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

d = tempfile.mkdtemp()
w = SummaryWriter(d)
w.add_scalar("loss", 1.5, 1)
w.close()
acc = EventAccumulator(d)
acc.Reload()
assert [e.value for e in acc.Scalars("loss")] == [1.5]
print("    ok")
EOF

echo "tests: ${tests}"
# shellcheck disable=SC2086
PATH="$(cd "${venv}/bin" && pwd):${PATH}" NLTK_DATA="$(cd "${venv}" && pwd)/nltk_data" OMP_NUM_THREADS=1 \
    "${venv}/bin/python" -m pytest -q -p no:cacheprovider $tests
