"""Mutation testing of the core modules with Cosmic Ray, module by module (`make mutation`).

For each module named in `mutation.toml` (beside this file), Cosmic Ray plants one bug at a
time in the module (a replaced operator, number, comparison, boolean, a loop run zero times,
a removed decorator, …) and runs that module's own fast test selection; a mutant is *killed*
when the tests fail (or time out), and *survives* when they still pass. The score of a module
is (killed + timed out) / mutants tested, and the run fails when a module is below the
threshold (85 %).

Cosmic Ray writes each mutant into the source file, so everything happens in a snapshot of
the working tree (`git ls-files`: tracked and untracked-but-not-ignored files) under the work
folder (`.mutation/` by default, which ignores itself), never in the checkout. The tests run
through `forkserver.py`, which imports torch and the other libraries once per module.

    python tests/mutation/run.py                     # every module
    python tests/mutation/run.py scores split        # some of them
    python tests/mutation/run.py --report            # the last run's table and survivors again
    python tests/mutation/run.py --list              # modules and their test selections

Survivors are printed with their file, line and change; those that `mutation.toml` explains
(`[[modules.NAME.explained]]`: an equivalent mutant, or why it is harmless) are marked so.
The sessions (`.mutation/sessions/NAME.sqlite`) can be read with Cosmic Ray's own tools too
(`cr-report --show-diff`, `cr-html`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import forkserver  # noqa: E402  (beside this file, not a package module)

DEFAULT_CONFIG = HERE / "mutation.toml"
TOOL = "cosmic-ray==8.7.0"
FORKSERVER = Path("tests/mutation/forkserver.py")
PROGRESS_EVERY_S = 60.0


@dataclasses.dataclass
class Survivor:
    path: str
    line: int
    operator: str
    removed: list[str]
    added: list[str]
    reason: str | None = None

    def change(self) -> str:
        return f"{' / '.join(self.removed)}  →  {' / '.join(self.added)}"


@dataclasses.dataclass
class Summary:
    name: str
    path: str
    mutants: int = 0
    killed: int = 0
    timeout: int = 0
    survived: int = 0
    other: int = 0  # errors, incompetent mutants, not run
    skipped: int = 0  # mutants of type annotations, which never run (not in `mutants`)
    seconds: float = 0.0
    survivors: list[Survivor] = dataclasses.field(default_factory=list)
    failure: str | None = None  # the module could not be tested at all
    stale: list[str] = dataclasses.field(default_factory=list)  # explanations of no survivor

    @property
    def tested(self) -> int:
        return self.killed + self.timeout + self.survived + self.other

    @property
    def score(self) -> float:
        return 100.0 * (self.killed + self.timeout) / self.tested if self.tested else 0.0


# --- configuration ------------------------------------------------------------------------------


def load_config(path: Path) -> dict:
    config = tomllib.loads(path.read_text())
    modules = config.get("modules", {})
    for name, module in modules.items():
        for key in ("path", "tests"):
            if key not in module:
                raise SystemExit(f"{path}: modules.{name} needs `{key}`")
    return config


def pytest_args(settings: dict, module: dict, basetemp: Path) -> list[str]:
    return [*module["tests"], *settings.get("pytest_args", []), f"--basetemp={basetemp}"]


# --- the snapshot -------------------------------------------------------------------------------


def snapshot(tree: Path) -> None:
    """Copy the working tree's tracked and untracked-but-not-ignored files into `tree`."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    if tree.exists():
        shutil.rmtree(tree)
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # deleted-but-tracked files and submodules are skipped
            target = tree / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def warm_bytecode(tree: Path, env: dict[str, str], args: list[str], module_path: str) -> None:
    """Cache the bytecode of everything but the mutated module, whose .pyc must never be used.

    A mutant can have the source size and modification second of the previous one, which
    Python would take for an up-to-date .pyc; the fork server writes no bytecode at all.
    """
    warm_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "src", "scripts", "tests"],
        cwd=tree,
        env=warm_env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(  # pytest's assertion-rewritten test modules
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *args],
        cwd=tree,
        env=warm_env,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    source = tree / module_path
    for cached in (source.parent / "__pycache__").glob(f"{source.stem}.*.pyc"):
        cached.unlink()


class Server:
    """The fork server for one module, started in the snapshot."""

    def __init__(self, tree: Path, socket_path: Path, preload: list[str], env: dict[str, str]):
        self.socket_path = str(socket_path)
        script = tree / FORKSERVER  # the snapshot's, like everything the run uses
        command = [sys.executable, str(script), "serve", self.socket_path]
        self.process = subprocess.Popen(
            [*command, "--preload", *preload],
            cwd=tree,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline().strip() if self.process.stdout else ""
        if line != "ready":
            self.process.kill()
            raise RuntimeError(f"the fork server did not start (said {line!r})")

    def pytest(self, args: list[str]) -> tuple[int, str]:
        answer = forkserver.request(self.socket_path, {"args": args})
        if answer is None:
            raise RuntimeError("the fork server stopped answering")
        return int(answer["rc"]), answer["output"]

    def close(self) -> None:
        if self.process.poll() is None:
            forkserver.request(self.socket_path, {"stop": True}, connect_timeout=1.0)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- one module ---------------------------------------------------------------------------------


def cosmic_ray_config(module_path: str, test_command: str, timeout: float, config: dict) -> str:
    """Cosmic Ray's own configuration for one module (TOML)."""
    lines = [
        "[cosmic-ray]",
        f"module-path = {json.dumps(module_path)}",
        f"timeout = {timeout:.1f}",
        "excluded-modules = []",
        f"test-command = {json.dumps(test_command)}",
        "",
        "[cosmic-ray.distributor]",
        'name = "local"',
    ]
    excluded = config.get("settings", {}).get("exclude_operators", [])
    if excluded:
        lines += ["", "[cosmic-ray.filters.operators-filter]"]
        lines.append(f"exclude-operators = {json.dumps(excluded)}")
    return "\n".join(lines) + "\n"


ANNOTATION = "skipped: a type annotation, never evaluated (from __future__ import annotations)"


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) (line, column) of every annotation, if the module defers their evaluation.

    Under `from __future__ import annotations` an annotation is a string that nothing in the
    core modules evaluates, so a mutant inside one (`int | None` → `int + None`) cannot change
    what the code does: Cosmic Ray makes eleven of them per `|` in a signature.
    """
    tree = ast.parse(source)
    deferred = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )
    if not deferred:
        return []
    annotations = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
            annotations += [a.annotation for a in every if a.annotation is not None]
            if node.returns is not None:
                annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    return [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in annotations]


def skip_annotation_mutants(session: Path, source: str) -> int:
    """Mark the session's mutants inside annotations as skipped; how many there were."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = annotation_spans(source)
    skipped = 0
    with use_db(str(session), WorkDB.Mode.open) as database:
        for item in database.pending_work_items:
            start = tuple(item.mutations[0].start_pos)
            if any(low <= start < high for low, high in spans):
                result = WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=ANNOTATION)
                database.set_result(item.job_id, result)
                skipped += 1
    return skipped


def count_results(session: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{session}?mode=ro", uri=True, timeout=5) as database:
            return database.execute("SELECT count(*) FROM work_results").fetchone()[0]
    except sqlite3.Error:
        return -1


def count_items(session: Path) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{session}?mode=ro", uri=True, timeout=5) as database:
        return database.execute("SELECT count(*) FROM work_items").fetchone()[0]


def cosmic_ray(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("cosmic-ray")), *args], cwd=cwd, env=env
    )


def test_module(name: str, config: dict, work: Path, tree: Path, env: dict[str, str]) -> Summary:
    settings, module = config.get("settings", {}), config["modules"][name]
    summary = Summary(name, module["path"])
    started = time.monotonic()
    sessions = work / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    session, cr_config = sessions / f"{name}.sqlite", sessions / f"{name}.toml"
    args = pytest_args(settings, module, work / "pytest-tmp")
    original = (tree / module["path"]).read_text()
    warm_bytecode(tree, env, args, module["path"])
    server = Server(tree, work / f"{name}.sock", settings.get("preload", []), env)
    try:
        clean = time.monotonic()
        rc, output = server.pytest(args)
        clean = time.monotonic() - clean
        if rc != 0:
            summary.failure = f"the tests fail without a mutant (exit {rc}):\n{output[-3000:]}"
            return summary
        timeout = max(
            settings.get("min_timeout_s", 20.0), settings.get("timeout_factor", 10) * clean
        )
        command = [sys.executable, str(tree / FORKSERVER), "run", server.socket_path, *args]
        cr_config.write_text(
            cosmic_ray_config(module["path"], " ".join(map(_quote, command)), timeout, config)
        )
        session.unlink(missing_ok=True)
        if cosmic_ray("init", str(cr_config), str(session), cwd=tree, env=env).wait() != 0:
            summary.failure = "cosmic-ray init failed"
            return summary
        if settings.get("exclude_operators"):
            filtered = Path(sys.executable).with_name("cr-filter-operators")
            subprocess.run([str(filtered), str(session), str(cr_config)], cwd=tree, check=True)
        skipped = skip_annotation_mutants(session, original)
        total = count_items(session)
        print(
            f"[{name}] {total - skipped} mutants ({skipped} in annotations skipped); "
            f"clean test run {clean:.1f} s, timeout {timeout:.0f} s"
        )
        process = cosmic_ray("exec", str(cr_config), str(session), cwd=tree, env=env)
        stop = threading.Event()

        def progress() -> None:
            while not stop.wait(PROGRESS_EVERY_S):
                print(f"[{name}] {count_results(session)}/{total} mutants tested", flush=True)

        reporter = threading.Thread(target=progress, daemon=True)
        reporter.start()
        try:
            code = process.wait()
        finally:
            stop.set()
            if process.poll() is None:
                process.terminate()
                process.wait()
        if code != 0:
            summary.failure = f"cosmic-ray exec exited with {code}"
    finally:
        server.close()
        (tree / module["path"]).write_text(original)  # Cosmic Ray restores it; belt and braces
    summarise(session, module, summary)
    summary.seconds = time.monotonic() - started
    (work / "sessions" / f"{name}.json").write_text(
        json.dumps(dataclasses.asdict(summary), indent=1, ensure_ascii=False)
    )
    return summary


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def _diff_lines(diff: str) -> tuple[list[str], list[str]]:
    removed, added = [], []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            removed.append(line[1:].strip())
        elif line.startswith("+"):
            added.append(line[1:].strip())
    return removed, added


def _mutated_lines(entry: dict) -> list[str]:
    mutated = entry["mutated"]
    return [m.strip() for m in ([mutated] if isinstance(mutated, str) else mutated)]


def _explanation(module: dict, removed: list[str], added: list[str]) -> str | None:
    """The reason of the `explained` entry that names this change, if any."""
    for entry in module.get("explained", []):
        if entry["line"].strip() in removed and any(m in added for m in _mutated_lines(entry)):
            return entry["reason"]
    return None


def stale_explanations(module: dict, survivors: list[Survivor]) -> list[str]:
    """Explained mutant lines that no survivor shows any more (killed now, or code changed)."""
    stale = []
    for entry in module.get("explained", []):
        for mutated in _mutated_lines(entry):
            if not any(
                entry["line"].strip() in s.removed and mutated in s.added for s in survivors
            ):
                stale.append(mutated)
    return stale


def summarise(session: Path, module: dict, summary: Summary) -> None:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    with use_db(str(session), WorkDB.Mode.open) as database:
        summary.mutants = database.num_work_items
        completed = database.completed_work_items
    for item, result in completed:
        if result.worker_outcome in (WorkerOutcome.SKIPPED, WorkerOutcome.NO_TEST):
            summary.mutants -= 1  # filtered out, or nothing to mutate: not a mutant
            summary.skipped += result.output == ANNOTATION
        elif result.worker_outcome != WorkerOutcome.NORMAL:
            summary.other += 1
        elif result.test_outcome == TestOutcome.SURVIVED:
            summary.survived += 1
            mutation = item.mutations[0]
            removed, added = _diff_lines(result.diff or "")
            summary.survivors.append(
                Survivor(
                    path=module["path"],
                    line=mutation.start_pos[0],
                    operator=mutation.operator_name,
                    removed=removed,
                    added=added,
                    reason=_explanation(module, removed, added),
                )
            )
        elif result.test_outcome == TestOutcome.KILLED:
            output = result.output or ""
            if output == "timeout":
                summary.timeout += 1
            elif forkserver.UNREACHABLE_MARKER in output:
                summary.other += 1
            else:
                summary.killed += 1
        else:
            summary.other += 1
    summary.other += summary.mutants - summary.tested  # never run (an interrupted session)
    summary.survivors.sort(key=lambda s: (s.line, s.operator))
    summary.stale = stale_explanations(module, summary.survivors)


# --- the report ---------------------------------------------------------------------------------


def print_report(summaries: list[Summary], threshold: float, wall_s: float | None) -> bool:
    """Print survivors and the table; True when every module reaches the threshold."""
    for summary in summaries:
        if summary.failure:
            print(f"\n{summary.name}: NOT TESTED: {summary.failure}")
        if summary.survivors:
            print(f"\n{summary.name}: {len(summary.survivors)} surviving mutant(s)")
        for survivor in summary.survivors:
            mark = f"explained: {survivor.reason}" if survivor.reason else "UNEXPLAINED"
            print(f"  {survivor.path}:{survivor.line} {survivor.operator}")
            print(f"      {survivor.change()}")
            print(f"      {mark}")
        if summary.stale and not summary.failure:
            print(f"\n{summary.name}: explained in the config but no longer surviving:")
            print("\n".join(f"  {line}" for line in summary.stale))
    header = ["module", "mutants", "killed", "timeout", "survived", "other", "score"]
    header += ["explained", "skipped"]
    rows = []
    for s in summaries:
        explained = sum(1 for v in s.survivors if v.reason)
        score = "n/a" if s.failure else f"{s.score:.1f} %"
        counts = [s.mutants, s.killed, s.timeout, s.survived, s.other]
        rows.append([s.name, *counts, score, explained, s.skipped])
    total = [sum(row[i] for row in rows) for i in range(1, 6)]
    tested = sum(total[1:5])
    overall = f"{100.0 * (total[1] + total[2]) / tested:.1f} %" if tested else "n/a"
    rows.append(["all", *total, overall, sum(row[7] for row in rows), sum(row[8] for row in rows)])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print()
    for index, row in enumerate([header, *rows]):
        if index == len(rows):
            print("  ".join("-" * w for w in widths))
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells))
    ok = all(not s.failure and s.score >= threshold for s in summaries)
    timing = f" in {wall_s / 60:.1f} min" if wall_s is not None else ""
    below = [s.name for s in summaries if s.failure or s.score < threshold]
    verdict = "every module reaches" if ok else f"below ({', '.join(below)})"
    print(f"\nmutation score threshold {threshold:g} %: {verdict}{timing}")
    unexplained = sum(1 for s in summaries for v in s.survivors if not v.reason)
    if unexplained:
        print(f"{unexplained} surviving mutant(s) UNEXPLAINED: kill them with a test, or explain")
        print("them under [[modules.NAME.explained]] in tests/mutation/mutation.toml")
    else:
        print("every surviving mutant is explained in tests/mutation/mutation.toml")
    return ok


def load_summaries(work: Path, names: list[str], config: dict) -> list[Summary]:
    summaries = []
    for name in names:
        session = work / "sessions" / f"{name}.sqlite"
        saved = work / "sessions" / f"{name}.json"
        if not session.exists():
            raise SystemExit(f"no session for {name} under {work}: run it first")
        summary = Summary(name, config["modules"][name]["path"])
        if saved.exists():
            summary.seconds = json.loads(saved.read_text()).get("seconds", 0.0)
        summarise(session, config["modules"][name], summary)
        summaries.append(summary)
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module names from the config (default: all)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".mutation")
    parser.add_argument("--report", action="store_true", help="print the last run's results")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    options = parser.parse_args(argv)
    config = load_config(options.config)
    settings = config.get("settings", {})
    names = options.modules or list(config["modules"])
    unknown = sorted(set(names) - set(config["modules"]))
    if unknown:
        parser.error(
            f"unknown module(s) {', '.join(unknown)}; known: {', '.join(config['modules'])}"
        )
    if options.list:
        for name in names:
            module = config["modules"][name]
            print(f"{name:14} {module['path']}\n{'':14} pytest {' '.join(module['tests'])}")
        return 0
    work = options.work_dir.resolve()
    threshold = float(settings.get("threshold", 85.0))
    if options.report:
        return 0 if print_report(load_summaries(work, names, config), threshold, None) else 1

    if not Path(sys.executable).with_name("cosmic-ray").exists():
        raise SystemExit(f"Cosmic Ray is not installed: {sys.executable} -m pip install {TOOL}")
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gitignore").write_text("# generated by tests/mutation/run.py\n*\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C
    env = dict(os.environ)
    env.update({k: str(v) for k, v in settings.get("env", {}).items()})
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("MUTANT_UNDER_TEST", None)
    started = time.monotonic()
    tree = work / "tree"
    snapshot(tree)
    summaries = []
    for name in names:
        summary = test_module(name, config, work, tree, env)
        print(
            f"[{name}] {summary.score:.1f} % killed ({summary.killed + summary.timeout}"
            f"/{summary.tested}) in {summary.seconds / 60:.1f} min",
            flush=True,
        )
        summaries.append(summary)
    shutil.rmtree(work / "pytest-tmp", ignore_errors=True)
    ok = print_report(summaries, threshold, time.monotonic() - started)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
