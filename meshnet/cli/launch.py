"""`meshnet launch` and `meshnet stop`.

`launch` checks every flag before anything starts (`config.from_args`), refuses at once if
another router holds the run or state dir, then either runs the router here
(`--foreground`, logging to stderr) or starts it in the background and returns as soon as
it answers on its socket. A background router logs to RUN_DIR/meshnet.log (size-capped,
rotated); what it prints before its logging is set up goes to RUN_DIR/meshnet.start, which
each launch starts afresh, so a failed launch shows its own error and nothing older.

On a Docker host the router runs as a container instead (`cli/container.py`,
`--router-mode`). `stop` returns only once the router's process (or container) is gone; if
it does not leave in time it is killed, and `stop` says so.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import time
from typing import Any

from meshnet.api.client import ApiClient
from meshnet.cli import container
from meshnet.config import child_argv, from_args, run_dir_of, socket_of
from meshnet.errors import Conflict, MeshnetError, RouterUnavailable
from meshnet.kernel import netns_lock
from meshnet.state.rundir import PID_NAME, lock_holder

LAUNCH_TIMEOUT = 15.0  # seconds a background router may take to answer on its socket
STOP_TIMEOUT = 10.0  # seconds a router may take to exit after `stop` before it is killed
POLL = 0.05  # seconds between checks
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


def run_foreground(config: Any, *, log_to_file: bool = False) -> int:
    from meshnet.daemon import Daemon

    if log_to_file:
        handler: logging.Handler = logging.handlers.RotatingFileHandler(config.log_file, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    logging.captureWarnings(True)  # into the (rotated) log, not the unbounded start file
    asyncio.run(Daemon(config).run())
    return 0


def _start_file(config: Any) -> str:
    return os.path.join(config.run_dir, "meshnet.start")


def _launch_background(config: Any) -> int:
    os.makedirs(config.run_dir, exist_ok=True)
    flags, secrets = child_argv(config)
    argv = [sys.executable, "-m", "meshnet", "launch", "--foreground", "--log-to-file", *flags]
    env = {**os.environ, **secrets}  # the secret by environment: a command line is readable by every user
    with open(_start_file(config), "wb") as out:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True)
    client = ApiClient(config.socket, timeout=2)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            print(f"meshnet: the router exited at start: {_own_error(config)}", file=sys.stderr)
            return 1
        if _pid_matches(config, child.pid):
            try:
                status = client.get("/status")
            except (MeshnetError, OSError):
                status = None
            if status is not None:
                r = status["router"]
                print(f"meshnet router {r['nick']} ({r['name']}) started, pid {child.pid}; log {config.log_file}")
                return 0
        time.sleep(POLL)
    print(f"meshnet: the router did not answer within {LAUNCH_TIMEOUT:.0f}s; see {config.log_file}", file=sys.stderr)
    return 1


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


def _pid_matches(config: Any, pid: int) -> bool:
    return _read_pid(config.pid_file) == pid


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
