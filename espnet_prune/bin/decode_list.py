"""Several ``espnet_prune.bin.asr_inference`` decodes in one process (run.sh stage 8).

    python -m espnet_prune.bin.decode_list exp/mini/decode_lists/decode.2.list

Each non-empty line of the list holds the arguments of one ``asr_inference`` call, shell
quoted (``#`` starts a comment line). Importing ESPnet costs about 10 s of CPU per process;
stage 8 of ``make compare`` decodes 17 models on 3 sets split over 2 jobs, so one process per
job instead of one per model, set and job saves about 100 imports. Every decode runs exactly
as a process of its own would run it. After each one, ``<output_dir>/.done`` is written
(atomically), so a stopped job's finished decodes are not redone (the recipe decides what is
stale and lists only that).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

from espnet_prune.bin import option_value


def read_list(path: Path) -> List[List[str]]:
    """The decodes of a list file, one argument vector per line; a line that cannot be split
    or has no ``--output_dir`` is an error naming the file and line."""
    decodes = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            argv = shlex.split(line)
        except ValueError as e:
            raise ValueError(f"{path}:{number}: {e}") from None
        if not option_value(argv, "--output_dir"):
            raise ValueError(f"{path}:{number}: no --output_dir")
        decodes.append(argv)
    return decodes


def main(argv: Optional[List[str]] = None) -> None:
    from espnet_prune.bin import asr_inference
    from espnet_prune.fileio import write_marker

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("list", type=Path, help="one asr_inference argument line per decode")
    args = parser.parse_args(argv)
    decodes = read_list(args.list)
    for i, decode in enumerate(decodes, 1):
        out = Path(option_value(decode, "--output_dir"))
        print(f"decode_list: {i}/{len(decodes)} {out}", file=sys.stderr, flush=True)
        start = time.time()
        asr_inference.main(decode)
        write_marker(out, {"wall_s": round(time.time() - start, 2)})


if __name__ == "__main__":
    main()
