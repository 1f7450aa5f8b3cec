"""Run model-written Python in a separate, limited process and report what happened.

`run_code(code)` writes the code to a fresh temporary directory, runs it there with `python -I` in
its own session, and returns a `SandboxResult`; it never raises because of what the code does.

What the child gets:
- a wall-clock timeout, after which its whole process group is SIGKILLed, and an RLIMIT_CPU;
- RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC and no core files;
- cwd, HOME and TMPDIR in the temporary directory, deleted afterwards, and a minimal environment;
- when `unshare --user --map-root-user --net --pid` works (unprivileged user namespaces, most Linux
  machines), new user, network, PID and IPC namespaces: no network interface but a down loopback,
  and every process it started dies with it even if it left the process group;
- always, an audit hook (`sys.addaudithook`, which code cannot remove) installed before the code
  runs, that refuses: writes, deletes, renames and permission changes outside the directory;
  sockets other than AF_UNIX, and AF_UNIX addresses outside the directory; os.system, exec,
  posix_spawn and subprocess; signals to processes outside its group; changing rlimits; and more
  than `_MAX_PROCS` forks, from the top process only (the kernel ignores RLIMIT_NPROC for root).

This is a guard against accidents and careless model code (a stray `rm -rf`, a fork bomb, an
infinite loop, a 10 GB list, a download), not a security boundary against a determined adversary:
ctypes, reading any file the user can read, or a C extension can get around it. Run untrusted code
at scale in a container or VM (gVisor, Firecracker) if that matters. The same holds for rewards
built on it: the code runs in the interpreter that reports its result, so code set on gaming the
check (reading the preamble's frame for the end-of-run marker, say) can; RL on code rewards is
where a policy finds such a route, so watch the pass rate against what the responses do.

Output is captured up to `_OUTPUT_LIMIT` bytes per stream; the program's lifetime is that of its
main process (children still running when it exits are killed). `finished` tells code that ran to
its last line from code that left early through sys.exit(0) or os._exit(0). Reasons: "ok",
"error" (non-zero exit), "timeout" (wall clock or CPU time), "memory" (MemoryError),
"output_limit", "killed" (died from another signal), "sandbox_error" (the sandbox could not start).
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from rung.errors import UserError

_OUTPUT_LIMIT = 64 * 1024
_MAX_PROCS = 64
_FILE_SIZE_LIMIT = 16 * 2**20
_OPEN_FILES_LIMIT = 256
_NAMESPACE_FLAGS = ["--user", "--map-root-user", "--net", "--pid", "--ipc", "--fork", "--kill-child"]

# Runs in the child before the model's code: limits first, then the audit hook, then the code as
# the real __main__ module (so multiprocessing can pickle its functions).
_PREAMBLE = r'''
import json, os, posix, resource, sys, traceback, types
_cfg = json.loads(sys.argv[1])
for _name, _value in _cfg["rlimits"].items():
    _kind = getattr(resource, _name)
    _hard = resource.getrlimit(_kind)[1]
    # CPU time: SIGXCPU at the soft limit (reported as a timeout), SIGKILL a second later.
    _top = _value + 1 if _name == "RLIMIT_CPU" else _value
    _value, _top = (_value, _top) if _hard == resource.RLIM_INFINITY else (min(_value, _hard), min(_top, _hard))
    resource.setrlimit(_kind, (_value, _top))
_ROOT = os.path.realpath(os.getcwd())
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
# event -> (path, dir_fd) argument positions that must lie inside the sandbox directory
_PATHS = {"os.remove": [(0, 1)], "os.rmdir": [(0, 1)], "os.mkdir": [(0, 2)], "os.rename": [(0, 2), (1, 3)],
          "os.link": [(0, 2), (1, 3)], "os.symlink": [(1, 2)], "os.truncate": [(0, None)],
          "os.chmod": [(0, 2)], "os.chown": [(0, 3)], "os.utime": [(0, 3)], "os.setxattr": [(0, None)],
          "os.removexattr": [(0, None)], "shutil.rmtree": [(0, 1)]}
_DENY = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.forkpty", "subprocess.Popen",
         "pty.spawn", "resource.setrlimit", "resource.prlimit"}
_forks = [_cfg["max_forks"]]

def _inside(path, dir_fd=None):
    if isinstance(path, int):
        path = os.readlink(f"/proc/self/fd/{path}")
    path = os.fsdecode(path)
    if dir_fd not in (None, -1) and not os.path.isabs(path):
        path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
    path = os.path.realpath(path)
    return path == _ROOT or path.startswith(_ROOT + "/")

def _refuse(what):
    raise PermissionError(f"sandbox: {what} is not allowed")

def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        writes = (flags or 0) & _WRITE or set(mode or "") & set("wax+")
        if writes and not isinstance(path, int) and path not in ("/dev/null", "/dev/stdout", "/dev/stderr") \
                and not _inside(path):
            _refuse(f"writing {path!r} outside the sandbox directory")
    elif event in _PATHS:
        for p, d in _PATHS[event]:
            if not _inside(args[p], None if d is None else args[d]):
                _refuse(f"{event} on {args[p]!r} outside the sandbox directory")
    elif event in _DENY:
        _refuse(event)
    elif event == "os.fork":
        if _forks[0] <= 0:
            _refuse("forking more processes")
        _forks[0] -= 1
    elif event in ("os.kill", "os.killpg"):
        pid = args[0] if event == "os.kill" else -args[0]
        if pid == -1:
            _refuse("signalling every process")
        try:
            group = -pid if pid < 0 else os.getpgid(pid) if pid > 0 else os.getpgrp()
        except OSError:
            return
        if group != os.getpgrp():
            _refuse("signalling a process outside the sandbox")
    elif event == "socket.__new__":
        if args[1] != 1:  # AF_UNIX: asyncio and multiprocessing need socketpair()
            _refuse("network access")
    elif event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"):
        address = args[1]
        if address is not None and not (isinstance(address, (str, bytes)) and address[:1] not in ("", "\0", b"", b"\0")
                                        and _inside(address)):
            _refuse(f"socket address {address!r}")

def _no_new_session(*args, **kwargs):
    _refuse("leaving the process group")

# The "open" audit event carries no dir_fd, and mkfifo and mknod raise no event at all.
def _guard_open(real):
    def open_(path, flags, *args, dir_fd=None, **kwargs):
        if dir_fd is not None and flags & _WRITE and not _inside(path, dir_fd):
            _refuse(f"writing {path!r} outside the sandbox directory")
        return real(path, flags, *args, dir_fd=dir_fd, **kwargs)
    return open_

def _guard_make(real):
    def make(path, *args, dir_fd=None, **kwargs):
        if not _inside(path, dir_fd):
            _refuse(f"creating {path!r} outside the sandbox directory")
        return real(path, *args, dir_fd=dir_fd, **kwargs)
    return make

os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, 0))
for _module in (os, posix):
    for _name in ("setsid", "setpgid", "setpgrp"):
        setattr(_module, _name, _no_new_session)
    _module.open = _guard_open(posix.open)
    _module.mkfifo = _guard_make(posix.mkfifo)
    _module.mknod = _guard_make(posix.mknod)
# Bound before the code runs: code that replaces sys.exit must not turn its own exception into
# a clean exit that reaches the marker below.
_die = os._exit
with open("main.py", encoding="utf-8") as _f:
    _source = _f.read()
sys.argv = ["main.py"]
_main = types.ModuleType("__main__")
_main.__file__ = "main.py"
sys.modules["__main__"] = _main
sys.addaudithook(_hook)
try:
    exec(compile(_source, "main.py", "exec"), _main.__dict__)
except SystemExit:
    raise
except BaseException as _e:
    traceback.print_exception(type(_e), _e, _e.__traceback__.tb_next)
    for _stream in (sys.stdout, sys.stderr):
        try:
            _stream.flush()
        except Exception:
            pass
    _die(1)
try:
    os.write(2, f"\n{_cfg['marker']}\n".encode())
except OSError:
    pass
'''


@dataclass(frozen=True)
class SandboxResult:
    ok: bool
    """True when the program exited with status 0 within its limits."""
    stdout: str
    stderr: str
    reason: str
    """"ok", "error", "timeout", "memory", "output_limit", "killed" or "sandbox_error"."""
    returncode: int | None
    """Exit status; negative for a signal (-9 when the sandbox killed it); None if it never started."""
    seconds: float
    finished: bool = False
    """The code ran to its last line: no exception, no sys.exit() or os._exit() on the way. A test
    harness appended to model code needs this as well as `ok`, or `sys.exit(0)` passes every test."""


@functools.cache
def _unshare() -> str | None:
    """Path of `unshare` if it can create user, network and PID namespaces here, else None."""
    path = shutil.which("unshare")
    if path is None:
        return None
    try:
        probe = subprocess.run([path, *_NAMESPACE_FLAGS, "--", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if probe.returncode == 0 else None


def isolation() -> str:
    """"namespaces" where the network and PID namespaces are in use, else "audit-hook"."""
    return "namespaces" if _unshare() else "audit-hook"


def _nproc_limit(namespaced: bool) -> int:
    # Outside a user namespace RLIMIT_NPROC counts every task of the user, so leave room for them.
    if namespaced or os.getuid() == 0:
        return _MAX_PROCS
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == os.getuid():
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                pass
    return count + _MAX_PROCS


def _exited(pid: int) -> bool:
    # WNOWAIT leaves the zombie in place, so its pid (= the process group id) cannot be reused
    # before we killpg the group.
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _collect(proc: subprocess.Popen, deadline: float) -> tuple[bytes, bytes, str | None]:
    """Read stdout and stderr until the main process exits, the deadline passes or output overflows."""
    buffers = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    with selectors.DefaultSelector() as selector:
        for stream in buffers:
            selector.register(stream, selectors.EVENT_READ)
        stop = None
        while stop is None and selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stop = "timeout"
                break
            exited = _exited(proc.pid)
            # After the exit, drain what is buffered without waiting for children holding the pipes.
            for key, _ in selector.select(0 if exited else min(remaining, 0.05)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffers[key.fileobj] += chunk
                if len(buffers[key.fileobj]) > _OUTPUT_LIMIT:
                    stop = "output_limit"
            if exited and not selector.select(0):
                break
        while stop is None and not _exited(proc.pid):  # pipes closed but the process still runs
            if time.monotonic() >= deadline:
                stop = "timeout"
            time.sleep(0.01)
    return bytes(buffers[proc.stdout]), bytes(buffers[proc.stderr]), stop


def _reason(returncode: int, stderr: str, stop: str | None) -> str:
    if stop is not None:
        return stop
    if returncode == 0:
        return "ok"
    if returncode == -signal.SIGXCPU:
        return "timeout"
    lines = stderr.strip().splitlines()
    if lines and "MemoryError" in lines[-1]:
        return "memory"
    return "killed" if returncode < 0 else "error"


def run_code(code: str, *, timeout: float = 5.0, memory_mb: int = 512, stdin: str | None = None) -> SandboxResult:
    """Run `code` as a Python program in the sandbox described in the module docstring.

    `timeout` is wall-clock seconds (CPU time is capped one second above it), `memory_mb` the
    address-space limit, `stdin` the program's standard input (empty when None).
    """
    if not sys.platform.startswith("linux"):
        raise UserError("the code sandbox needs Linux (rlimits, /proc, namespaces); run it in a Linux container")
    if not isinstance(code, str):
        raise UserError(f"run_code needs the program as a str, got {type(code).__name__}")
    if not 0 < timeout < math.inf or not memory_mb > 0:
        raise UserError(f"run_code needs a finite timeout > 0 and memory_mb > 0, got {timeout} and {memory_mb}")
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="rung-sandbox-")
    try:
        return _run(code, workdir, start, timeout, memory_mb, stdin)
    except OSError as e:
        return SandboxResult(False, "", f"sandbox: {e}", "sandbox_error", None, time.monotonic() - start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(code: str, workdir: str, start: float, timeout: float, memory_mb: int, stdin: str | None) -> SandboxResult:
    with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8", errors="replace") as f:
        f.write(code)
    unshare = _unshare()
    limits = {"RLIMIT_AS": memory_mb * 2**20, "RLIMIT_CPU": math.ceil(timeout) + 1, "RLIMIT_CORE": 0,
              "RLIMIT_FSIZE": _FILE_SIZE_LIMIT, "RLIMIT_NOFILE": _OPEN_FILES_LIMIT,
              "RLIMIT_NPROC": _nproc_limit(unshare is not None)}
    # Random, so that printing a fixed string cannot fake `finished`; code that goes looking for it
    # (it is in the command line) can, like the other ways around this sandbox.
    marker = f"rung-sandbox-finished-{secrets.token_hex(8)}"
    config = json.dumps({"rlimits": limits, "max_forks": _MAX_PROCS, "marker": marker})
    command = [sys.executable, "-I", "-B", "-u", "-c", _PREAMBLE, config]
    if unshare:
        command = [unshare, *_NAMESPACE_FLAGS, "--", *command]
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryFile() as stdin_file:
        stdin_file.write((stdin or "").encode("utf-8", "replace"))
        stdin_file.seek(0)
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdin=stdin_file, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    with proc:
        try:
            out, err, stop = _collect(proc, start + timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
    stdout = out[:_OUTPUT_LIMIT].decode("utf-8", "replace")
    stderr = err[:_OUTPUT_LIMIT].decode("utf-8", "replace")
    # Anywhere, not only at the end: atexit handlers, logging's shutdown and non-daemon threads
    # may still write to stderr after the program's last line ran.
    head, found, tail = stderr.partition(f"\n{marker}\n")
    finished = bool(found)
    if found:
        stderr = head + ("\n" + tail if tail else "")
    reason = _reason(proc.returncode, stderr, stop)
    return SandboxResult(reason == "ok", stdout, stderr, reason, proc.returncode, time.monotonic() - start,
                         finished and reason == "ok")
