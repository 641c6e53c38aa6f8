"""What a folder holds: `python -m scripts.runs [DIR] [--json]`.

Lists the training runs, cross-validations and sweeps under DIR (default: the current folder;
also a `checkpoints/`, `logs/`, `cv/` or `sweeps/` folder, or one cross-validation or sweep)
with their status and main score, the options that differ between their configurations, and
those trained on a processed folder that has been rebuilt since. Nothing is written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import OptionParser, one_line_warnings


def build_runs_parser() -> OptionParser:
    """The command line: the folder, and whether to print JSON."""
    parser = OptionParser(description=(__doc__ or "").splitlines()[0], allow_abbrev=False)
    parser.add_argument(
        "folder", type=Path, nargs="?", default=Path(),
        help="the folder to list (default: the current folder)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the listing of the folder; exit status 2 when it is not a folder."""
    one_line_warnings()
    arguments = build_runs_parser().parse_args(argv)
    from src.run_listing import format_listing, list_folder, listing_json

    try:
        listing = list_folder(arguments.folder)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if arguments.json:
        print(json.dumps(listing_json(listing), indent=1))
    else:
        print(format_listing(listing))
    return 0


if __name__ == "__main__":
    from src.shutdown import finish

    sys.exit(finish(main()))
