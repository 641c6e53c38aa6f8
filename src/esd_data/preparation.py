"""Which preparation a command asks for, resolved against what the processed folder holds.

The processed folder's manifest is the source of truth: an option left unset (None) takes
the manifest's value, so a folder prepared with `--preprocessing '{s1_blur_sigma: 2}'
--seed 3` is used as it is by every later command. Only options given explicitly and
different from the manifest change the folder (`describe_changes` says how, in one line).
Preparation runs under a lock file in the processed folder, so processes that start at
once (DDP ranks, several nodes on a shared disk) prepare it once: the first prepares, the
others wait and then reuse the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.atomic import check_writable
from src.esd_data.manifest import FORMAT_VERSION, MANIFEST_FILE, Manifest
from src.esd_data.subtiles import check_tile_size_gt

if TYPE_CHECKING:
    from src.esd_data.cache import PrepareSummary
    from src.esd_data.preprocessing import PreprocessConfig

LOCK_FILE = ".prepare.lock"
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_TEST_FRACTION = 0.0
DEFAULT_TILE_SIZE_GT = 4


@dataclass(frozen=True)
class PrepareOptions:
    """Concrete preparation parameters, as `prepare_dataset` takes them."""

    preprocessing: PreprocessConfig
    seed: int
    val_fraction: float
    test_fraction: float
    tile_size_gt: int


@dataclass(frozen=True)
class PrepareRequest:
    """Preparation options a command asks for; None means "as the processed folder has it".

    `preprocessing` holds overrides of `PreprocessConfig` fields, applied over the folder's
    parameters (over the defaults for a new folder). `new_folder_seed` is the split seed of a
    folder prepared for the first time when `split_seed` is unset.
    """

    preprocessing: dict[str, Any] | None = None
    split_seed: int | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    tile_size_gt: int | None = None
    new_folder_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.tile_size_gt is not None:
            check_tile_size_gt(self.tile_size_gt)
        if self.preprocessing is not None:
            self._preprocess_config({})

    def _preprocess_config(self, base: dict[str, Any]) -> PreprocessConfig:
        from src.esd_data.preprocessing import PreprocessConfig

        if self.preprocessing is not None and not isinstance(self.preprocessing, dict):
            raise ValueError(f"preprocessing must be a mapping, got {self.preprocessing!r}")
        values = {**base, **(self.preprocessing or {})}
        try:
            return PreprocessConfig.from_dict(values)
        except TypeError as error:
            raise ValueError(f"preprocessing: {error}") from error

    def resolve(self, previous: Manifest | OutdatedManifest | None) -> PrepareOptions:
        """The concrete options: explicit values, else `previous`'s, else the defaults."""
        if previous is None:
            return PrepareOptions(
                preprocessing=self._preprocess_config({}),
                seed=self.new_folder_seed if self.split_seed is None else self.split_seed,
                val_fraction=_given(self.val_fraction, DEFAULT_VAL_FRACTION),
                test_fraction=_given(self.test_fraction, DEFAULT_TEST_FRACTION),
                tile_size_gt=_given(self.tile_size_gt, DEFAULT_TILE_SIZE_GT),
            )
        return PrepareOptions(
            preprocessing=self._preprocess_config(dict(previous.preprocessing)),
            seed=_given(self.split_seed, previous.seed),
            val_fraction=_given(self.val_fraction, previous.val_fraction),
            test_fraction=_given(self.test_fraction, previous.test_fraction),
            tile_size_gt=_given(self.tile_size_gt, previous.tile_size_gt),
        )


def _given(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def describe_changes(previous: Manifest | OutdatedManifest, options: PrepareOptions) -> str | None:
    """One line naming what `options` change in a prepared folder (None: nothing)."""
    rebuilt = [
        f"{key}={value!r} (was {previous.preprocessing.get(key)!r})"
        for key, value in options.preprocessing.to_dict().items()
        if previous.preprocessing.get(key) != value
    ]
    resplit = [
        f"{name}={getattr(options, option)!r} (was {getattr(previous, name)!r})"
        for name, option in (
            ("seed", "seed"),
            ("val_fraction", "val_fraction"),
            ("test_fraction", "test_fraction"),
        )
        if getattr(previous, name) != getattr(options, option)
    ]
    parts = []
    if rebuilt:
        parts.append("rebuilding every tile for preprocessing " + ", ".join(rebuilt))
    if resplit:
        parts.append("re-splitting the tiles for split " + ", ".join(resplit))
    if options.tile_size_gt != previous.tile_size_gt:
        parts.append(f"default tile_size_gt {options.tile_size_gt} (was {previous.tile_size_gt})")
    return "; ".join(parts) or None


@dataclass(frozen=True)
class OutdatedManifest:
    """The preparation options of a manifest written by an older esd (another format)."""

    raw_dir: str
    preprocessing: dict[str, Any]
    seed: int
    val_fraction: float
    test_fraction: float
    tile_size_gt: int
    purpose: str = "training"


def read_previous_manifest(processed_dir: Path) -> Manifest | OutdatedManifest | None:
    """The folder's manifest (None when there is none); an older format's options, so that
    rebuilding keeps its split. ValueError for a damaged or edited one: a rebuild would have
    to guess its split, so it is not rebuilt silently."""
    path = Path(processed_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return Manifest.load(processed_dir)
    except ValueError as error:
        try:
            values = json.loads(path.read_text())
            if values.get("format_version") != FORMAT_VERSION:
                names = [f.name for f in dataclasses.fields(OutdatedManifest)]
                return OutdatedManifest(**{name: values[name] for name in names if name in values})
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        raise ValueError(
            f"{error}; to rebuild it, give its split explicitly (--seed, --val_fraction and "
            f"--test_fraction), or delete {path}"
        ) from None


def read_manifest_for(
    request: PrepareRequest, processed_dir: Path
) -> Manifest | OutdatedManifest | None:
    """`read_previous_manifest`, except that a damaged manifest is rebuilt (None) when
    `request` gives the whole split."""
    try:
        return read_previous_manifest(processed_dir)
    except ValueError:
        if None in (request.split_seed, request.val_fraction, request.test_fraction):
            raise
        return None


RUNS_FILE = "runs.jsonl"
"""A processed folder's record of the trainings and cross-validations that read it."""


def record_run(processed_dir: Path, where: Path, fingerprint: str) -> None:
    """Append to the folder's `runs.jsonl` that a run (its checkpoints or cross-validation
    folder `where`) reads the folder as `fingerprint` says; nothing on a read-only folder."""
    line = json.dumps({"where": str(Path(where).resolve()), "fingerprint": fingerprint})
    try:
        with (Path(processed_dir) / RUNS_FILE).open("a") as handle:
            handle.write(line + "\n")
    except OSError as error:
        if error.errno not in READ_ONLY:
            raise


def runs_of(processed_dir: Path, fingerprint: str | None) -> list[dict[str, str]]:
    """The runs recorded as reading the folder while its manifest had `fingerprint`."""
    path = Path(processed_dir) / RUNS_FILE
    if fingerprint is None or not path.is_file():
        return []
    runs = []
    for line in path.read_text().splitlines():
        try:
            run = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed process
        if run.get("fingerprint") == fingerprint and run not in runs:
            runs.append(run)
    return runs


READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
"""Why a lock file cannot be created in a folder that can still be read."""
_REPORTED_READ_ONLY: set[Path] = set()


@contextlib.contextmanager
def preparation_lock(processed_dir: Path, shared: bool = False, log: Any = print) -> Iterator[None]:
    """Hold a lock on `processed_dir`: exclusive to change it (other processes wait), shared
    to read it (any number of readers; a change waits until they are done). A process that
    has to wait says so in one line. A read-only folder (a data set shared on a cluster) is
    read without a lock, which nothing could change anyway, and says so in one line; changing
    one is a one-line error."""
    folder = Path(processed_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / LOCK_FILE).open("a")
    except OSError as error:
        if error.errno not in READ_ONLY or not folder.is_dir():
            raise
        if not shared:
            raise ValueError(
                f"{folder} is read-only ({error.strerror}): it cannot be prepared or changed "
                f"there; pass a writable --processed_dir"
            ) from None
        if folder.resolve() not in _REPORTED_READ_ONLY:  # once per folder and process
            _REPORTED_READ_ONLY.add(folder.resolve())
            log(f"{folder} is read-only: used as it is, without a lock (nothing can change it)")
        yield
        return
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    with handle:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            user = (
                "is being changed"
                if shared
                else "is in use (a training reads it, or it is prepared)"
            )
            log(f"{folder} {user} by another process: waiting for it")
            fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_same_source(
    previous: Manifest | OutdatedManifest | None, raw_dir: Path, processed_dir: Path
) -> None:
    """ValueError when `processed_dir` was prepared from another raw folder than `raw_dir`."""
    if previous is None or Path(previous.raw_dir).resolve() == Path(raw_dir).resolve():
        return
    raise ValueError(
        f"{processed_dir} was prepared from {previous.raw_dir}, not {raw_dir}: pass "
        f"--raw_dir {previous.raw_dir} (checks the cache against its raw files), --raw_dir none "
        f"(uses {processed_dir} as it is), or another --processed_dir for {raw_dir}"
    )


def prepare_requested(
    raw_dir: Path,
    processed_dir: Path,
    request: PrepareRequest,
    workers: int = 2,
    log: Any = print,
    verify: str = "sample",
) -> PrepareSummary:
    """Prepare (or reuse) `processed_dir` from `raw_dir` as `request` asks: a cache hit under
    a shared lock, a change under the exclusive one (after every reader is done).

    Logs one line when explicit options change a prepared folder.
    `verify` is how cached tiles are checked before reuse ("sample" or "full", every pixel).
    """
    existed = Path(processed_dir).exists()
    try:
        with preparation_lock(processed_dir, shared=True, log=log):  # usually a cache hit
            summary = _prepare(raw_dir, processed_dir, request, workers, verify, reuse_only=True)
    except BaseException:
        if not existed:  # nothing was prepared: leave no folder that looks like one
            remove_unfinished(Path(processed_dir), only_lock=True)
        raise
    if summary is not None:
        return summary
    check_writable(processed_dir, "processed cache")
    with preparation_lock(processed_dir, log=log):
        try:
            summary = _prepare(raw_dir, processed_dir, request, workers, verify, log=log)
        except BaseException:
            # a first preparation that fails (under the exclusive lock: nobody else was
            # writing) leaves no folder behind
            if not existed:
                remove_unfinished(Path(processed_dir))
            raise
    assert summary is not None
    return summary


def remove_unfinished(folder: Path, only_lock: bool = False) -> None:
    """Remove a folder this call created and could not finish (it has no manifest: nothing in
    it was ever trusted); with `only_lock`, only when it holds nothing but the lock."""
    if not folder.is_dir() or (folder / MANIFEST_FILE).exists():
        return
    if only_lock and any(p.name != LOCK_FILE for p in folder.iterdir()):
        return
    shutil.rmtree(folder, ignore_errors=True)


def _prepare(
    raw_dir: Path,
    processed_dir: Path,
    request: PrepareRequest,
    workers: int,
    verify: str,
    reuse_only: bool = False,
    log: Any = print,
) -> PrepareSummary | None:
    """One preparation under the caller's lock (None: `reuse_only` and the cache is stale)."""
    from src.esd_data.cache import prepare_dataset

    previous = read_manifest_for(request, processed_dir)
    check_same_source(previous, raw_dir, processed_dir)
    options = request.resolve(previous)
    change = None if previous is None else describe_changes(previous, options)
    if change and reuse_only:
        return None
    if change:
        log(f"{processed_dir}: {change}")
        users = runs_of(processed_dir, getattr(previous, "fingerprint", None))
        if users:
            log(
                f"{processed_dir} changes under {len(users)} run(s) trained on it (e.g. "
                f"{', '.join(u['where'] for u in users[:3])}): their checkpoints keep their own "
                f"split and tile hashes, and scripts.evaluate --raw_dir {raw_dir} prepares their "
                f"tiles again; to keep both folders, prepare into another --processed_dir"
            )
    return prepare_dataset(
        raw_dir,
        processed_dir,
        options.tile_size_gt,
        options.seed,
        options.val_fraction,
        options.test_fraction,
        workers,
        options.preprocessing,
        verify=verify,
        reuse_only=reuse_only,
    )
