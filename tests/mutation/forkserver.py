"""A fork server that runs pytest for Cosmic Ray without re-importing torch for every mutant.

Cosmic Ray writes each mutant into the source file and runs its `test-command` in a fresh
process; importing torch, Lightning, scikit-learn and pytest costs about two seconds, more
than most focused test selections take. So `serve` imports those libraries once (never the
project's own `src`/`tests` packages), and `run`, the test command, asks it to fork a child
that runs `pytest.main(args)`. The child imports the project's modules from the source files
as they are on disk at that moment, that is with the mutant in place. Bytecode is neither
written nor (for the mutated module, whose cached .pyc the runner deletes) read.
Hypothesis runs without its shrink and explain phases, which only make a failing example
smaller (the mutant is killed all the same), and pytest's `unraisableexception` plugin, whose
forced garbage collections at exit cost more than most test selections, should be disabled
with `-p no:unraisableexception` in the arguments.

    python tests/mutation/forkserver.py serve SOCKET [--preload MODULE ...]   (cwd: project)
    python tests/mutation/forkserver.py run SOCKET [PYTEST ARGS ...]          (Cosmic Ray's command)

`run` exits with pytest's exit status (0: the mutant survived; anything else kills it), or
with UNREACHABLE when it cannot reach the server (the runner reports such results as errors,
never as kills). When `run` is killed (Cosmic Ray's timeout), the server kills the child.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

UNREACHABLE = 97
UNREACHABLE_MARKER = "mutation fork server unreachable"
OUTPUT_TAIL = 20_000  # characters of the child's output sent back to Cosmic Ray


def _send(connection: socket.socket, message: dict) -> None:
    connection.sendall(json.dumps(message).encode() + b"\n")


def _receive(connection: socket.socket) -> dict | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            return None
        data += chunk
    return json.loads(data)


# --- server ------------------------------------------------------------------------------------


def _child(args: list[str], output_fd: int) -> None:
    """In the forked child: run pytest with its output in `output_fd`; never returns."""
    code = 3
    try:
        os.setsid()  # its own process group, so that a timeout kills whatever it started
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        import pytest

        code = int(pytest.main(args))
    except BaseException:  # noqa: BLE001 - report anything, then exit: never run the server loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if code >= 0 else 3)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):  # already gone
        os.killpg(pid, signal.SIGKILL)


def _handle(listener: socket.socket, connection: socket.socket) -> bool:
    """Serve one request; False when it asks the server to stop."""
    request = _receive(connection)
    if request is None:
        return True
    if request.get("stop"):
        _send(connection, {"rc": 0, "output": "stopping"})
        return False
    with tempfile.TemporaryFile() as output:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            connection.close()
            _child(request["args"], output.fileno())
        rc = None
        while rc is None:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            readable, _, _ = select.select([connection], [], [], 0.05)
            if readable and not connection.recv(1):  # the client is gone (timed out, killed)
                _kill_group(pid)
                os.waitpid(pid, 0)
                return True
        _kill_group(pid)  # anything the tests left running
        output.seek(0)
        text = output.read().decode(errors="replace")[-OUTPUT_TAIL:]
    if rc < 0:  # killed by a signal (a segfault, say): a failed test run all the same
        rc = 128 - rc
    with contextlib.suppress(OSError):  # the client gave up meanwhile
        _send(connection, {"rc": rc, "output": text})
    return True


def serve(path: str, preload: list[str]) -> None:
    sys.dont_write_bytecode = True
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    here = Path(__file__).resolve().parent  # not a place to import the project from
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    for name in preload:
        __import__(name)
    if "hypothesis" in sys.modules:
        from hypothesis import Phase, settings

        phases = [Phase.explicit, Phase.reuse, Phase.generate]
        settings.register_profile("mutation", phases=phases, print_blob=False)
        settings.load_profile("mutation")
    project = sorted(m for m in sys.modules if m.split(".")[0] in ("src", "tests", "scripts"))
    if project:
        raise SystemExit(f"preloading imported project modules {project}: mutants would be unseen")
    Path(path).unlink(missing_ok=True)
    gc.collect()
    gc.freeze()  # the preloaded objects: never scanned again, nor copied on write by the children
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    print("ready", flush=True)
    try:
        running = True
        while running:
            connection, _ = listener.accept()
            with connection:
                running = _handle(listener, connection)
    finally:
        listener.close()
        Path(path).unlink(missing_ok=True)


# --- client ------------------------------------------------------------------------------------


def request(path: str, message: dict, connect_timeout: float = 10.0) -> dict | None:
    """Send one request and wait for its answer; None when the server cannot be reached."""
    deadline = time.monotonic() + connect_timeout
    while True:
        try:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.connect(path)
            break
        except OSError:
            connection.close()
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)
    with connection:
        _send(connection, message)
        return _receive(connection)


def run(path: str, args: list[str]) -> int:
    answer = request(path, {"args": args})
    if answer is None:
        print(f"{UNREACHABLE_MARKER}: {path}", flush=True)
        return UNREACHABLE
    sys.stdout.write(answer["output"])
    sys.stdout.flush()
    return int(answer["rc"])


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        preload = argv[3:] if len(argv) > 2 and argv[2] == "--preload" else []
        serve(argv[1], preload)
        return 0
    if len(argv) >= 2 and argv[0] == "run":
        return run(argv[1], argv[2:])
    if len(argv) == 2 and argv[0] == "stop":
        return 0 if request(argv[1], {"stop": True}, connect_timeout=1.0) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
