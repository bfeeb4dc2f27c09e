"""`python -m fevae.recommend RUN [RUN ...] [--out FILE.json]`: which detector to recommend, by the rule of
:mod:`fevae.detectors.recommend` (in-distribution validation scores and proxy outliers made from the runs'
training images; never an evaluation image). Prints the rule's table; ``--out`` also writes it as JSON."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fevae.detectors.recommend import N_PROXY, format_table
from fevae.errors import FevaeError
from fevae.pipeline.recommend import recommend
from fevae.utils.io import write_json_atomic
from fevae.utils.log import lightning_quiet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fevae.recommend", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (e.g. the seeds of one experiment)")
    parser.add_argument("--id-set", default=None, help="the in-distribution set's name (default: the run's)")
    parser.add_argument("--n-proxy", type=int, default=N_PROXY, help="proxy images per family and run")
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        with lightning_quiet():  # no "Seed set to", "GPU available" or tips around the table
            result = recommend(args.runs, args.id_set, args.n_proxy)
    except FevaeError as err:
        raise SystemExit(f"error: {err}") from None
    print(format_table(result))
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
