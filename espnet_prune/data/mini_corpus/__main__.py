"""``python -m espnet_prune.data.mini_corpus --out_dir DIR ...`` (see :mod:`.cli`)."""

import sys

from espnet_prune.data.mini_corpus.cli import main

# the usage line names the program as it did when the corpus was one module
sys.exit(main(prog="mini_corpus.py"))
