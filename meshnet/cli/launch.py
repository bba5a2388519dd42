"""`meshnet launch` and `meshnet stop`.

`launch` checks every flag before anything starts (`config.from_args`), refuses at once if
another router holds the run or state dir, then either runs the router here
(`--foreground`, logging to stderr) or starts it in the background and returns as soon as
it is up. The background router is a fork of `launch` itself, made after the router's
modules are imported (a fresh interpreter would import them all again: most of the start
time), in a session of its own; it says "up" through a pipe the moment its API answers,
so `launch` neither polls nor waits longer than the start takes. A background router logs
to RUN_DIR/meshnet.log (size-capped, rotated); what it prints before its logging is set up
goes to RUN_DIR/meshnet.start, which each launch starts afresh, so a failed launch shows its
own error and nothing older.

On a Docker host the router runs as a container instead (`cli/container.py`,
`--router-mode`). `stop` returns only once the router's process (or container) is gone; if
it does not leave in time it is killed, and `stop` says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.handlers
import os
import select
import signal
import sys
import time
import traceback
from typing import Any, Callable

from meshnet.api.client import ApiClient
from meshnet.cli import container
from meshnet.config import child_argv, from_args, run_dir_of, socket_of
from meshnet.errors import Conflict, MeshnetError, RouterUnavailable, UsageError
from meshnet.kernel import netns_lock
from meshnet.state.rundir import PID_NAME, lock_holder

LAUNCH_TIMEOUT = 60.0  # seconds a background router may take to come up (50 starting at once on 2 cores)
STOP_TIMEOUT = 10.0  # seconds a router may take to exit after `stop` before it is killed
POLL = 0.05  # seconds between checks while `stop` waits
LOG_BYTES = 10 << 20  # one log file; then it is rotated
LOG_BACKUPS = 3
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _refuse_if_held(config: Any) -> None:
    for kind, path in (("run", config.run_dir), ("state", config.state_dir)):
        holder = lock_holder(path)
        if holder is not None:
            raise Conflict(f"another meshnet router (pid {holder}) is already running with {kind} dir {path}; stop it first (meshnet stop) or use --{kind}-dir")
    holder = netns_lock.holder()
    if holder is not None:
        raise Conflict(f"another meshnet router (pid {holder}) runs in this network namespace; stop it first (meshnet stop)")


def cmd_launch(args: argparse.Namespace) -> int:
    config = from_args(args)
    _refuse_if_held(config)
    if args.foreground:
        return run_foreground(config, log_to_file=args.log_to_file)
    engine, note = container.choose(config)
    if engine is not None:
        try:
            return container.launch(config, engine)
        finally:
            engine.close()
    if note:
        print(f"meshnet: note: running the router as a background process: {note}", file=sys.stderr)
    container.forget_record(config.run_dir)
    return _launch_background(config)


def run_foreground(config: Any, *, log_to_file: bool = False, ready: Callable[[dict[str, Any]], None] | None = None) -> int:
    from meshnet.daemon import Daemon

    if log_to_file:
        handler: logging.Handler = logging.handlers.RotatingFileHandler(config.log_file, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    logging.captureWarnings(True)  # into the (rotated) log, not the unbounded start file
    asyncio.run(Daemon(config).run(ready=ready))
    return 0


def _start_file(config: Any) -> str:
    return os.path.join(config.run_dir, "meshnet.start")


def _launch_background(config: Any) -> int:
    os.makedirs(config.run_dir, exist_ok=True)
    import meshnet.daemon  # noqa: F401  # before the fork: the router then starts without importing

    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the router
        os.close(read_fd)
        os._exit(_background_router(config, write_fd))
    os.close(write_fd)
    try:
        return _wait_up(config, pid, read_fd)
    finally:
        os.close(read_fd)


def _background_router(config: Any, ready_fd: int) -> int:
    """In the forked child: detach, send output to the start file, run; the exit code."""
    try:
        os.setsid()
        out = os.open(_start_file(config), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)  # the caller's pipes (a test's capture) are let go here
        os.dup2(out, 2)
        os.close(out)
        os.close(devnull)

        def ready(router: dict[str, Any]) -> None:
            os.write(ready_fd, json.dumps(router).encode() + b"\n")
            os.close(ready_fd)

        return run_foreground(config, log_to_file=True, ready=ready)
    except UsageError as exc:
        print(f"meshnet: {exc.message or exc}", file=sys.stderr)
        return 2
    except (MeshnetError, OSError, ValueError) as exc:
        message = getattr(exc, "message", None) or (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))
        print(f"meshnet: {message}", file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _wait_up(config: Any, pid: int, ready_fd: int) -> int:
    """Wait for the router's "up" on the pipe (end of file: it exited first)."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    data = b""
    while time.monotonic() < deadline and not data.endswith(b"\n"):
        readable, _, _ = select.select([ready_fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        chunk = os.read(ready_fd, 4096)
        if not chunk:  # the router exited before it was up
            _reap(pid)
            print(f"meshnet: the router exited at start: {_own_error(config)}", file=sys.stderr)
            return 1
        data += chunk
    if not data.endswith(b"\n"):
        print(f"meshnet: the router did not come up within {LAUNCH_TIMEOUT:.0f}s; see {config.log_file}", file=sys.stderr)
        return 1
    r = json.loads(data)
    print(f"meshnet router {r['nick']} ({r['name']}) started, pid {pid}; log {config.log_file}")
    return 0


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _own_error(config: Any) -> str:
    """The failed child's own last words: its `meshnet:` line, else its last line."""
    try:
        with open(_start_file(config), errors="replace") as f:
            lines = [line.rstrip() for line in f if line.strip()]
    except OSError:
        lines = []
    ours = [line for line in lines if line.startswith("meshnet: ")]
    if ours:
        return ours[-1][len("meshnet: ") :]
    return lines[-1] if lines else "no output (see the log)"


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours has exited
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmd_stop(args: argparse.Namespace) -> int:
    run_dir = run_dir_of(args)
    done = container.stop(run_dir, STOP_TIMEOUT)
    if done is not None:
        print(done)
        return 0
    client = ApiClient(socket_of(args), timeout=5)
    pid = _read_pid(os.path.join(run_dir, PID_NAME))
    if pid is not None and not _alive(pid):
        pid = None
    try:
        client.post("/stop")
    except (RouterUnavailable, TimeoutError):  # gone, or hung: signals, then the wait below
        if pid is None:
            raise RouterUnavailable(f"no router is running with run dir {run_dir}") from None
        os.kill(pid, signal.SIGTERM)
    if pid is None:  # it answered but left no pid file: wait for its socket to go
        deadline = time.monotonic() + STOP_TIMEOUT
        while os.path.exists(client.path) and time.monotonic() < deadline:
            time.sleep(POLL)
        print("meshnet router stopped")
        return 0
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(pid):
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            print(f"meshnet: the router (pid {pid}) did not exit within {STOP_TIMEOUT:.0f}s; killed it", file=sys.stderr)
            return 1
        time.sleep(POLL)
    print(f"meshnet router stopped (pid {pid})")
    return 0
