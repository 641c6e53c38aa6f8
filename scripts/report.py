"""One self-contained HTML report: `python -m scripts.report DIR [DIR …] [--out FILE.html]`.

Each DIR is a cross-validation's folder (`scripts.cross_validate`), one model's folder in
it, or an evaluation's results folder (`scripts.evaluate`). The page (`report.html` inside
the one folder, or `--out`) embeds every picture and opens from disk with no network; its
leaderboard is also written as Markdown and LaTeX beside it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_report_parser() -> argparse.ArgumentParser:
    """The command line: one or more folders, and where the page goes."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "folders", type=Path, nargs="+",
        help="cross-validation folders (or one model's folder in one) and evaluation folders",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None,
        help="the page to write (default: FOLDER/report.html for one folder; needed for several)",
    )  # fmt: skip
    parser.add_argument(
        "--bootstrap_resamples",
        type=int,
        default=1000,
        help="resamples of the paired differences between the folders' runs",
    )
    parser.add_argument("--bootstrap_seed", type=int, default=0, help="their seed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report and print where it is."""
    from src.cli import one_line_warnings

    one_line_warnings()
    arguments = build_report_parser().parse_args(argv)
    from src.evaluation.cv_record import CVRecordError
    from src.evaluation.html_report import write_report

    try:
        target = write_report(arguments.folders, arguments.out, arguments.bootstrap_resamples,
                              arguments.bootstrap_seed)  # fmt: skip
    except (CVRecordError, OSError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    stem = target.with_suffix("")
    print(f"wrote {target} ({target.stat().st_size} bytes), {stem}_leaderboard.md and "
          f"{stem}_leaderboard.tex")  # fmt: skip
    return 0


if __name__ == "__main__":
    from src.shutdown import finish

    sys.exit(finish(main()))
