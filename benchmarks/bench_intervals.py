"""How often the 95 % bootstrap intervals over tiles hold the true score, by simulation.

    python -m benchmarks.bench_intervals [--sims 1000] [--resamples 1000] [--seed 0] [--quick]

`src.evaluation.bootstrap` gives 95 % intervals of scores pooled over parent tiles. Here many
small test sets are drawn from a known population of tiles, and each interval method is scored
by its coverage: the share of test sets whose interval holds the population's score (an honest
95 % interval covers 95 % of the time).

The population, one per scenario. A tile has 16×16 = 256 label cells. A share of the tiles
(`typical`: 0.5; `rare`: 0.2, closer to the real data, where class 1 is rarer) holds class 1,
on a Beta(2, 6) share of its cells (mean 0.25); the other cells are classes 2..4 in
Dirichlet(1, 1, 1) proportions drawn per tile. The model has a difficulty z ~ N(0, 1) per tile
(a random effect on the logit): it misses a class-1 cell at rate logistic(logit(0.25) + z),
spread evenly over classes 2..4, and any other cell at rate logistic(logit(0.12) + z), 15 % of
those errors predicted as class 1 (false positives, on tiles without class 1 too) and the rest
split between the two remaining classes; its class-1 F1 is about 0.76 (`typical`) and 0.66
(`rare`). The second model of the paired difference misses more (+0.4 on both logits), its
difficulty correlated 0.8 with the first's, on the same truth. The true score is that of the
confusion matrix summed over `--population` tiles (the expected pooled matrix, since a pooled
F1 is a ratio of sums, not a mean of per-tile scores).

The methods are those of `src.evaluation.bootstrap.METHODS`, all on the same test sets and
seeds: `expanded` (the module's default; Hesterberg's expanded percentile interval,
the percentile interval at the levels Φ(±√(n/(n−1))·t_{n−1, 0.975}) for n tiles), `percentile`
(at 2.5 % and 97.5 %) and `bca` (scipy.stats.bootstrap's BCa). A resample whose summed truth
has no class-1 cell has no class-1 F1: `expanded` and `percentile` leave it out of the
f1_class1 interval, `bca` cannot and scores it 0.

For each scenario and 8, 12, 20, 30, 40 and 60 tiles, `--sims` test sets are drawn and each
gets the intervals of `bootstrap_intervals` by each method. Printed: the coverage of
f1_class1, f1_macro and accuracy, the mean width of the f1_class1 interval, and the share of
test sets given no f1_class1 interval. A set with no class-1 tile has no class-1 F1 and is
promised none: f1_class1 coverage is over the other sets, and an interval given on such a set
anyway is not scored (it shows as a smaller `no f1c1` than the share of such sets). The
interval of `paired_difference` (f1_class1 of the model minus the worse model's) is measured
the same way at 12, 30 and 60 tiles by each method, with the share of sets whose interval
excludes 0 (the power to tell the two models apart). The closing reading names the method
closest to 95 % at each number of tiles (mean distance over the three scores and both
scenarios) and the fewest tiles from which the default method covers every score in both
scenarios at least 90 % and at least 93 % of the time (at that number and every larger one
measured). `MIN_INTERVAL_TILES` is set to 1 in this process while it runs, so that the
smaller sets get an interval to measure.
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np
from scipy.special import expit, logit

from src.evaluation import bootstrap

SCENARIOS = {"typical": 0.5, "rare": 0.2}
"""Scenario → share of the tiles that hold class 1."""
TILE_COUNTS = (8, 12, 20, 30, 40, 60)
PAIRED_TILE_COUNTS = (12, 30, 60)
METHODS = tuple(bootstrap.METHODS)
SCORES = ("f1_class1", "f1_macro", "accuracy")
CELLS = 256
CLASS1_SHARE = (2.0, 6.0)
"""Beta parameters of the share of a tile's cells in class 1, where it has any."""
MISSED = np.array([0.25, 0.12, 0.12, 0.12])
"""Rate at which a cell of each true class is predicted wrong, on a tile of median difficulty."""
TO_CLASS1 = 0.15
ERRORS = np.array(
    [
        [0, 1 / 3, 1 / 3, 1 / 3],
        [TO_CLASS1, 0, (1 - TO_CLASS1) / 2, (1 - TO_CLASS1) / 2],
        [TO_CLASS1, (1 - TO_CLASS1) / 2, 0, (1 - TO_CLASS1) / 2],
        [TO_CLASS1, (1 - TO_CLASS1) / 2, (1 - TO_CLASS1) / 2, 0],
    ]
)
"""Row: true class; where its errors go."""
WORSE = 0.4
"""How much more the second model misses, on the logit."""
SHARED_DIFFICULTY = 0.8
FLOORS = (0.90, 0.93)
"""Coverages the default method must reach on every score, for the reading."""


def predict(rng: np.random.Generator, truth: np.ndarray, logit_shift: np.ndarray) -> np.ndarray:
    """(tiles, 4, 4) confusion matrices of a model on the truth counts (tiles, 4), each tile's
    miss rates moved by its `logit_shift`."""
    missed = expit(logit(MISSED) + logit_shift[:, None])[..., None]
    return rng.multinomial(truth, (1 - missed) * np.eye(4) + missed * ERRORS)


def draw(rng: np.random.Generator, tiles: int, class1_tiles: float) -> np.ndarray:
    """(tiles, 2, 4, 4): confusion matrices of the model and of the worse one on the same tiles."""
    share1 = np.where(rng.random(tiles) < class1_tiles, rng.beta(*CLASS1_SHARE, tiles), 0.0)
    others = rng.dirichlet(np.ones(3), tiles) * (1 - share1)[:, None]
    truth = rng.multinomial(CELLS, np.column_stack([share1, others]))
    difficulty = rng.standard_normal(tiles)
    own = np.sqrt(1 - SHARED_DIFFICULTY**2) * rng.standard_normal(tiles)
    other = SHARED_DIFFICULTY * difficulty + own
    return np.stack([predict(rng, truth, difficulty), predict(rng, truth, other + WORSE)], axis=1)


def summary(
    intervals: list[list[float] | None], true: float, scored: np.ndarray
) -> tuple[float, float, float]:
    """Coverage and mean width of the intervals made on the `scored` sets, and the share of
    all sets given none (None or NaN)."""
    made = np.array([i is not None and bool(np.isfinite(i).all()) for i in intervals])
    bounds = np.array([intervals[i] for i in np.flatnonzero(made & scored)]).reshape(-1, 2)
    covered = (bounds[:, 0] <= true) & (true <= bounds[:, 1])
    return covered.mean(), np.diff(bounds).mean(), 1 - made.mean()


def coverage(args: argparse.Namespace) -> None:
    sims, resamples = args.sims, args.resamples
    tables: dict[tuple[str, str, int], dict[str, float]] = {}
    paired_rows = []
    for s, (scenario, class1_tiles) in enumerate(SCENARIOS.items()):
        population = draw(np.random.default_rng([args.seed, s]), args.population, class1_tiles)
        true = bootstrap.scores_of_confusion(population.sum(axis=0))
        true_difference = true["f1_class1"][0] - true["f1_class1"][1]
        print(
            f"{scenario}: {class1_tiles:.0%} of tiles hold class 1; true "
            + ", ".join(f"{k} {true[k][0]:.3f}" for k in SCORES)
            + f"; f1_class1 difference to the worse model {true_difference:+.3f}"
        )
        for n in TILE_COUNTS:
            rng = np.random.default_rng([args.seed, s, n])
            sets = draw(rng, sims * n, class1_tiles).reshape(sims, n, 2, 4, 4)
            seeds = [int(seed) for seed in rng.integers(2**31, size=sims)]
            with_class1 = sets[:, :, 0, 0, :].sum(axis=(1, 2)) > 0
            scored = {k: with_class1 if k == "f1_class1" else np.ones(sims, bool) for k in SCORES}
            for method in METHODS:
                found = [
                    bootstrap.bootstrap_intervals(tiles[:, 0], resamples, seed, method)
                    for tiles, seed in zip(sets, seeds, strict=True)
                ]
                row = {}
                for k in SCORES:
                    intervals = [f.get(k) for f in found]
                    row[k], width, missing = summary(intervals, true[k][0], scored[k])
                    if k == "f1_class1":
                        row["width"], row["none"] = width, missing
                tables[scenario, method, n] = row
                if n in PAIRED_TILE_COUNTS:
                    found = [
                        bootstrap.paired_difference(
                            tiles[:, 0], tiles[:, 1], resamples, seed, method=method
                        )
                        for tiles, seed in zip(sets, seeds, strict=True)
                    ]
                    intervals = [f["interval"] for f in found]
                    cover, width, missing = summary(intervals, true_difference, with_class1)
                    excludes = np.mean([f["includes_zero"] is False for f in found])
                    paired_rows.append((scenario, method, n, cover, width, excludes, missing))
    print_tables(tables, paired_rows, sims)


def print_tables(
    tables: dict[tuple[str, str, int], dict[str, float]], paired_rows: list[tuple], sims: int
) -> None:
    print(
        f"\nCoverage of the 95 % intervals ({sims} test sets a row; binomial standard error "
        f"of a coverage near 95 %: ±{100 * np.sqrt(0.95 * 0.05 / sims):.1f} points)"
    )
    print(
        f"{'scenario':<9}{'method':<12}{'tiles':>5}{'f1_class1':>11}{'f1_macro':>10}"
        f"{'accuracy':>10}{'width f1c1':>12}{'no f1c1':>9}"
    )
    for (scenario, method, n), row in tables.items():
        print(
            f"{scenario:<9}{method:<12}{n:>5}{row['f1_class1']:>11.3f}{row['f1_macro']:>10.3f}"
            f"{row['accuracy']:>10.3f}{row['width']:>12.3f}{row['none']:>9.1%}"
        )
    print("\nPaired difference of f1_class1 (model − worse model, same tiles)")
    print(
        f"{'scenario':<9}{'method':<12}{'tiles':>5}{'coverage':>10}{'width':>8}"
        f"{'excludes 0':>12}{'none':>7}"
    )
    for scenario, method, n, cover, width, excludes, missing in paired_rows:
        print(
            f"{scenario:<9}{method:<12}{n:>5}{cover:>10.3f}{width:>8.3f}{excludes:>12.1%}"
            f"{missing:>7.1%}"
        )
    print("\n" + reading(tables))


def reading(tables: dict[tuple[str, str, int], dict[str, float]]) -> str:
    """The method closest to 95 % at each size, and from how many tiles the default method
    covers every score at least each of `FLOORS`."""

    def coverages(method: str, n: int) -> list[float]:
        return [tables[scenario, method, n][k] for scenario in SCENARIOS for k in SCORES]

    def gap(method: str, n: int) -> float:
        return float(np.mean([abs(c - bootstrap.CONFIDENCE) for c in coverages(method, n)]))

    closest = {n: min(METHODS, key=lambda m: gap(m, n)) for n in TILE_COUNTS}
    best = ", ".join(f"{n}: {m} ({gap(m, n):.3f})" for n, m in closest.items())
    default = bootstrap.DEFAULT_METHOD
    lowest = {n: min(coverages(default, n)) for n in TILE_COUNTS}

    def reached(floor: float) -> str:
        above = [n for i, n in enumerate(TILE_COUNTS) if min(list(lowest.values())[i:]) >= floor]
        return f"≥ {floor:.2f} from {above[0]} tiles" if above else f"≥ {floor:.2f} at no size here"

    return (
        f"Reading: by mean distance to 95 % over the three scores and both scenarios, the "
        f"closest method at each number of tiles (its distance) is {best}. The default method "
        f"({default}) covers every score in both scenarios {' and '.join(map(reached, FLOORS))} "
        f"(at that number and every larger one here); its lowest coverage at each number of tiles: "
        + ", ".join(f"{n}: {c:.3f}" for n, c in lowest.items())
        + "."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sims", type=int, default=1000, help="test sets per table row")
    parser.add_argument("--resamples", type=int, default=bootstrap.DEFAULT_RESAMPLES)
    parser.add_argument(
        "--population", type=int, default=200_000, help="tiles drawn to estimate the true scores"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 50 test sets, 200 resamples, 20 000 population tiles",
    )
    args = parser.parse_args()
    if args.quick:
        args.sims, args.resamples, args.population = 50, 200, 20_000
    print(
        f"MIN_INTERVAL_TILES set from {bootstrap.MIN_INTERVAL_TILES} to 1 in this process only, "
        f"to measure intervals on fewer tiles; {args.resamples} resamples, seed {args.seed}"
    )
    start = time.perf_counter()
    with mock.patch.object(bootstrap, "MIN_INTERVAL_TILES", 1):
        coverage(args)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
