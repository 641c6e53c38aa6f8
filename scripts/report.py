"""One self-contained HTML report: `python -m scripts.report RUN_OR_CV_DIR`.

RUN_OR_CV_DIR is a cross-validation's folder (`scripts.cross_validate`) or an evaluation's
results folder (`scripts.evaluate`); the page (`report.html` inside it) embeds every picture
and opens from disk with no network.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_report_parser() -> argparse.ArgumentParser:
    """The command line: one folder."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("folder", type=Path, help="a cross-validation or evaluation folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report and print where it is."""
    folder = build_report_parser().parse_args(argv).folder
    from src.evaluation.cv_record import CVRecordError
    from src.evaluation.html_report import write_report

    try:
        target = write_report(folder)
    except (CVRecordError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {target} ({target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    from src.shutdown import finish

    sys.exit(finish(main()))
