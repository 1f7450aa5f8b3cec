"""The code sandbox: results for ordinary programs, and containment of the harmful ones, with and
without namespaces (the audit-hook fallback is forced by pretending `unshare` is missing)."""

import os
import socket
import sys
import textwrap
import time

import pytest

from rung.errors import UserError
from rung.llm import sandbox
from rung.llm.sandbox import run_code

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")


@pytest.fixture(params=["namespaces", "audit-hook"])
def isolation(request, monkeypatch):
    if request.param == "namespaces" and sandbox.isolation() != "namespaces":
        pytest.skip("unshare cannot create user namespaces on this machine")
    if request.param == "audit-hook":
        monkeypatch.setattr(sandbox, "_unshare", lambda: None)
    assert sandbox.isolation() == request.param
    return request.param


def _processes_in(directory: str) -> list[int]:
    """Pids whose working directory is `directory` (it shows as '<dir> (deleted)' once removed)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/cwd").startswith(directory):
                pids.append(int(entry))
        except OSError:
            pass
    return pids


def _assert_no_survivors(directory: str) -> None:
    # SIGKILLed processes take a moment to be reaped; the children under test sleep 30 s, so
    # anything still there after this grace period was not killed.
    for _ in range(50):
        survivors = _processes_in(directory)
        if not survivors:
            return
        time.sleep(0.1)
    for pid in survivors:
        os.kill(pid, 9)
    pytest.fail(f"sandbox processes survived: {survivors}")


@pytest.mark.parametrize("code, stdin, reason, stdout, stderr", [
    ("print('hello')", None, "ok", "hello\n", ""),
    ("import sys; print(sys.stdin.read().upper())", "abc", "ok", "ABC\n", ""),
    ("def f():\n    return 1 / 0\nf()", None, "error", "", "ZeroDivisionError: division by zero"),
    ("def f(:\n    pass", None, "error", "", "SyntaxError"),
    ("import sys; print('partial'); sys.exit(3)", None, "error", "partial\n", ""),
    ("x = bytearray(10 * 2**30)", None, "memory", "", "MemoryError"),
    ("print('x' * 200_000)", None, "output_limit", "", ""),
    ("import os; print(os.environ.get('HOME') == os.getcwd(), 'PYTHONPATH' in os.environ)", None, "ok",
     "True False\n", ""),
])
def test_results(code, stdin, reason, stdout, stderr):
    result = run_code(code, timeout=5, stdin=stdin)
    assert result.reason == reason, result.stderr
    assert result.ok == (reason == "ok")
    assert result.stdout.startswith(stdout)
    assert stderr in result.stderr
    assert len(result.stdout) <= sandbox._OUTPUT_LIMIT


@pytest.mark.parametrize("code, ok, finished", [
    ("print('done')", True, True),
    ("import sys; sys.stderr.write('no newline at the end')", True, True),
    ("import sys; sys.exit(0)\nprint('never')", True, False),
    ("import os; os._exit(0)", True, False),
    ("exit()", True, False),
    ("raise ValueError", False, False),
    # Code that disarms sys.exit must not turn its own error into a clean finish (a reward of 1).
    ("import sys; sys.exit = lambda *a: None\nraise RuntimeError('boom')", False, False),
    # Written to stderr after the last line ran, at interpreter exit: still a program that finished.
    ("import atexit, sys; atexit.register(lambda: sys.stderr.write('bye'))", True, True),
])
def test_finished_tells_running_to_the_end_from_exiting_early(code, ok, finished):
    result = run_code(code)
    assert (result.ok, result.finished) == (ok, finished)
    assert "rung-sandbox-finished" not in result.stderr


def test_traceback_names_the_line_of_the_error():
    result = run_code("x = 1\ny = x / 0\n")
    assert 'File "main.py", line 2' in result.stderr and "y = x / 0" in result.stderr
    assert "_hook" not in result.stderr and "exec(" not in result.stderr  # the preamble's frame is dropped


def test_cpu_limit_warns_before_it_kills():
    # Soft and hard limits apart, so that code burning CPU faster than the clock (several threads)
    # gets SIGXCPU, a "timeout", rather than a bare SIGKILL.
    result = run_code("import resource\nprint(*resource.getrlimit(resource.RLIMIT_CPU))", timeout=3)
    assert result.ok and result.stdout.split() == ["4", "5"]


def test_infinite_loop_is_killed_at_the_timeout(isolation):
    result = run_code("print('started', flush=True)\nwhile True:\n    pass", timeout=1)
    assert result.reason == "timeout" and not result.ok
    assert result.returncode == -9
    assert result.stdout == "started\n"  # output before the kill is kept


def test_fork_bomb_is_contained_and_killed(isolation):
    bomb = textwrap.dedent("""
        import os, time
        print(os.getcwd(), flush=True)
        for _ in range(9):  # guard: at most 2**9 processes even if nothing stopped it
            try:
                os.fork()
            except OSError:
                print("refused", flush=True)
                break
        time.sleep(30)
    """)
    result = run_code(bomb, timeout=2)
    assert result.reason == "timeout"
    assert "refused" in result.stdout
    _assert_no_survivors(result.stdout.splitlines()[0])


def test_children_are_killed_on_timeout(isolation):
    code = textwrap.dedent("""
        import os, time
        print(os.getcwd(), flush=True)
        if os.fork() == 0:
            time.sleep(30)
            print("child outlived the sandbox", flush=True)
            os._exit(0)
        time.sleep(30)
    """)
    result = run_code(code, timeout=1)
    assert result.reason == "timeout"
    _assert_no_survivors(result.stdout.splitlines()[0])


def test_children_left_behind_by_a_finished_program_are_killed(isolation):
    code = textwrap.dedent("""
        import os, time
        print(os.getcwd(), flush=True)
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        print("main done", flush=True)
    """)
    result = run_code(code, timeout=20)
    assert result.reason == "ok" and "main done" in result.stdout
    _assert_no_survivors(result.stdout.splitlines()[0])


def test_network_is_blocked(isolation):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = run_code(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)", timeout=5)
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.reason == "error"
    assert "PermissionError" in result.stderr


@pytest.mark.parametrize("code", [
    "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
    "import socket; socket.socket(socket.AF_INET6)",
    "import socket; socket.getaddrinfo('localhost', 80); socket.socket()",
    "import socket; socket.socket(socket.AF_UNIX).connect('/run/docker.sock')",
])
def test_socket_creation_is_refused(code):
    result = run_code(code)
    assert result.reason == "error"
    assert "PermissionError: sandbox" in result.stderr


def test_unix_socketpair_still_works():
    code = "import socket\na, b = socket.socketpair()\na.sendall(b'x')\nprint(b.recv(1))"
    assert run_code(code).stdout == "b'x'\n"


@pytest.mark.parametrize("code", [
    "open({target!r}, 'w').write('x')",
    "open({target!r}, 'a').write('x')",
    "import os; os.close(os.open({target!r}, os.O_WRONLY | os.O_CREAT))",
    "import os; os.symlink({target!r}, 'link'); open('link', 'w').write('x')",
    "import pathlib; pathlib.Path({target!r}).write_text('x')",
    "import shutil; open('mine.txt', 'w').write('x'); shutil.copy('mine.txt', {target!r})",
    "import os; os.chdir('/'); open({target!r}.lstrip('/'), 'w').write('x')",
    "import os; d = os.open(os.path.dirname({target!r}), os.O_RDONLY); "
    "os.close(os.open(os.path.basename({target!r}), os.O_WRONLY | os.O_CREAT, dir_fd=d))",
    "import os; os.mkfifo({target!r})",
    "import os; os.mknod({target!r})",
])
def test_writing_outside_its_directory_is_refused(code, tmp_path, isolation):
    target = str(tmp_path / "outside.txt")
    result = run_code(code.format(target=target))
    assert result.reason == "error"
    assert "PermissionError: sandbox" in result.stderr
    assert not os.path.exists(target)


@pytest.mark.parametrize("code", [
    "import os; os.remove({keep!r})",
    "import os; os.rename({keep!r}, 'stolen.txt')",
    "import os; os.chmod({keep!r}, 0)",
    "import os; os.truncate({keep!r}, 0)",
    "import shutil; shutil.rmtree({folder!r})",
    "import os; os.system('rm ' + {keep!r})",
    "import subprocess; subprocess.run(['rm', {keep!r}])",
    "import os; os.execv('/bin/rm', ['rm', {keep!r}])",
])
def test_changing_files_outside_its_directory_is_refused(code, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    result = run_code(code.format(keep=str(keep), folder=str(tmp_path)))
    assert result.reason == "error"
    assert "PermissionError: sandbox" in result.stderr
    assert keep.read_text() == "precious"
    assert oct(keep.stat().st_mode)[-3:] != "000"


def test_writing_inside_its_directory_works(isolation):
    code = textwrap.dedent("""
        import os, shutil, tempfile
        open("out.txt", "w").write("hi")
        os.makedirs("d/e")
        os.rename("out.txt", "d/e/x.txt")
        with tempfile.NamedTemporaryFile("w") as f:
            f.write("tmp")
        print(open("d/e/x.txt").read())
        shutil.rmtree("d")
        print(os.listdir("."))
    """)
    result = run_code(code)
    assert result.reason == "ok", result.stderr
    assert result.stdout == "hi\n['main.py']\n"


def test_its_directory_is_removed_afterwards():
    directory = run_code("import os; open('x', 'w'); print(os.getcwd())").stdout.strip()
    assert directory and not os.path.exists(directory)


def test_signals_to_outside_processes_are_refused():
    result = run_code(f"import os, signal; os.kill({os.getpid()}, signal.SIGTERM)")
    assert result.reason == "error"  # we are still here
    result = run_code("import os, signal; os.kill(-1, signal.SIGTERM)")
    assert "PermissionError: sandbox" in result.stderr


@pytest.mark.parametrize("returncode, stderr, stop, reason", [
    (0, "", None, "ok"),
    (1, "Traceback...\nValueError: x\n", None, "error"),
    (2, "", None, "error"),
    (1, "Traceback...\nMemoryError\n", None, "memory"),
    (1, "Traceback...\nnumpy.core._exceptions._ArrayMemoryError: Unable to allocate\n", None, "memory"),
    (-24, "", None, "timeout"),   # SIGXCPU: the CPU-time limit
    (-11, "", None, "killed"),
    (-9, "", "timeout", "timeout"),
    (-9, "", "output_limit", "output_limit"),
    (0, "", "timeout", "timeout"),
])
def test_reasons(returncode, stderr, stop, reason):
    assert sandbox._reason(returncode, stderr, stop) == reason


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"timeout": -1}, {"timeout": float("inf")}, {"memory_mb": 0}])
def test_bad_limits_are_user_errors(kwargs):
    with pytest.raises(UserError):
        run_code("pass", **kwargs)


def test_code_must_be_text():
    with pytest.raises(UserError):
        run_code(b"print(1)")
