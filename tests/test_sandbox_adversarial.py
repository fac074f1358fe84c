"""The adversarial suite: reward hacks and attacks on the host and on the judging harness. Each must
score as failed for the precise reason asserted, and leave the host unharmed; the honest solution
passes.

Programs run through the real sandbox and judge (grpopp.rewards.sandbox, grpopp.rewards.code_judge) with short
limits (wall 2 s, CPU 1 s). Function tests run the split-process harness: the test code in a
trusted process, the program in a runner process it calls over pipes. Tests skip with the reason
when bwrap cannot run here."""

import os
import resource
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from grpopp.rewards.code_judge import HiddenTests, Outcome, StdioTest, apps_call_suite, judge, mbpp_suite, plan_jobs
from grpopp.rewards.sandbox import ExecResult, Job, Sandbox, SandboxConfig, unavailable_reason

CONFIG = SandboxConfig(wall_timeout_s=2.0, cpu_time_s=1, processes=16, workers=2)
HERE = Path(__file__).resolve()
SAMPLE = HERE.parent.parent / "envs" / "data" / "code_sample.jsonl"


BWRAP_PROBLEM = unavailable_reason(CONFIG)
pytestmark = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"bwrap sandbox unavailable: {BWRAP_PROBLEM}")


@pytest.fixture(scope="module")
def box():
    with Sandbox(CONFIG) as sandbox:
        yield sandbox


def run_suite(box: Sandbox, program: str, suite: HiddenTests) -> tuple[list[Outcome], list[ExecResult]]:
    plan = plan_jobs(program, suite, box.config)
    results = box.run_many(plan.jobs)
    return judge(plan, results), results


def stdio(box: Sandbox, program: str, *pairs: tuple[str, str]) -> tuple[list[Outcome], list[ExecResult]]:
    suite = HiddenTests(kind="stdio", stdio=[StdioTest(input=i, output=o) for i, o in pairs])
    return run_suite(box, program, suite)


def function(box: Sandbox, program: str, *calls: tuple[list, object]) -> tuple[list[Outcome], list[ExecResult]]:
    """MBPP-style asserts ``assert solve(*args) == expected``, one test each."""
    asserts = [f"assert solve({', '.join(map(repr, args))}) == {expected!r}" for args, expected in calls]
    return run_suite(box, program, mbpp_suite(asserts, "adversarial"))


def kinds(outcomes: list[Outcome]) -> list[str]:
    return [outcome.kind for outcome in outcomes]


def host_processes(marker: str) -> list[int]:
    """Live (non-zombie) host processes whose command line contains ``marker`` (bwrap's own, whose
    arguments name /sandbox/main.py too, left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and "bwrap" not in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


# -- resource exhaustion -----------------------------------------------------------------------------


def test_infinite_loop_hits_the_cpu_limit(box):
    (outcome,), (result,) = stdio(box, "while True:\n    pass\n", ("", "1\n"))
    assert outcome.kind == "limit" and "cpu" in outcome.reason
    assert result.limits_hit == ["cpu"] and result.signal == signal.SIGKILL and not result.timed_out


def test_ignoring_sigxcpu_does_not_help(box):
    program = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"
    (outcome,), (result,) = stdio(box, program, ("", "1\n"))
    assert outcome.kind == "limit" and result.limits_hit == ["cpu"] and result.signal == signal.SIGKILL


def test_sleep_past_the_limit_is_killed_by_the_parent(box):
    (outcome,), (result,) = stdio(box, "import time\ntime.sleep(60)\nprint(1)\n", ("", "1\n"))
    assert outcome.kind == "timeout"
    assert result.timed_out and result.limits_hit == ["wall"] and 2.0 <= result.wall_time_s < 4.0


def test_closing_stdout_then_sleeping_still_times_out(box):
    program = "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)\n"
    (outcome,), (result,) = stdio(box, program, ("", "1\n"))
    assert outcome.kind == "timeout" and result.timed_out


def test_fork_bomb_is_capped_and_leaves_nothing(box):
    """A real fork bomb: every process forks forever. The host sees at most ``processes`` of them
    at any time (RLIMIT_NPROC, applied because bwrap runs as an unprivileged host uid), stays
    responsive, and none survive the run."""
    marker = "/sandbox/main.py"
    before = host_processes(marker)
    peak, host_latency, done = [0], [0.0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], len(host_processes(marker)) - len(before))
            start = time.monotonic()
            subprocess.run(["true"], check=True)
            host_latency[0] = max(host_latency[0], time.monotonic() - start)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
        (outcome,), (result,) = stdio(box, program, ("", "1\n"))
    finally:
        done.set()
        watcher.join()
    assert outcome.kind in ("timeout", "limit") and (result.timed_out or "cpu" in result.limits_hit)
    assert 1 <= peak[0] <= CONFIG.processes
    assert host_latency[0] < 2.0  # the host still starts a process at once (a frozen host would not)
    assert host_processes(marker) == before  # none survive


def test_concurrent_containers_do_not_share_the_process_budget(box):
    """Since Linux 5.14 RLIMIT_NPROC counts per user namespace: two containers under the same host
    uid each get the whole budget at the same time."""
    program = (
        "import os, time\nn = 0\nfor _ in range(100):\n    try:\n        pid = os.fork()\n    except OSError:\n"
        "        break\n    if pid == 0:\n        time.sleep(1)\n        os._exit(0)\n    n += 1\nprint(n)\n"
    )
    results = box.run_many([Job(program=program)] * 2)
    counts = [int(r.stdout) for r in results]
    assert counts == [CONFIG.processes - 1] * 2  # the program itself is the 16th


def test_memory_bomb_fails_with_memory_limit(box):
    (outcome,), (result,) = stdio(box, "x = [0] * (1 << 31)\n", ("", "1\n"))
    assert outcome.kind == "limit" and result.limits_hit == ["memory"] and result.exit_code == 1


def test_gigabyte_of_output_is_cut_at_the_cap_without_buffering_it(box):
    program = "import sys\nchunk = 'x' * 65536\nfor _ in range(16384):\n    sys.stdout.write(chunk)\n"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (outcome,), (result,) = stdio(box, program, ("", "x\n"))
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert outcome.kind == "limit" and result.limits_hit == ["stdout"] and result.stdout_truncated
    assert len(result.stdout) == CONFIG.stdout_max_bytes and not result.timed_out  # killed at the cap
    assert growth_mb < 64


def test_filling_tmp_hits_the_tmpfs_size(box):
    program = "for i in range(4):\n    open(f'/tmp/f{i}', 'wb').write(b'x' * (15 << 20))\n"
    (outcome,), (result,) = stdio(box, program, ("", "1\n"))
    assert outcome.kind == "runtime_error" and "No space left on device" in result.stderr


# -- escaping the container ----------------------------------------------------------------------


def test_writing_outside_tmp_fails_and_the_host_is_untouched(box, tmp_path):
    host_target = tmp_path / "planted"
    targets = ["/planted", "/usr/planted", "/sandbox/planted", "/etc/planted", str(host_target), "/sandbox/main.py"]
    program = (
        f"import json\nfailed = []\nfor path in {targets!r}:\n    try:\n        open(path, 'w').write('x')\n"
        "    except OSError as exc:\n        failed.append(type(exc).__name__)\nopen('/tmp/ok', 'w').write('x')\n"
        "print(len(failed))\n"
    )
    (outcome,), (result,) = stdio(box, program, ("", str(len(targets)) + "\n"))
    assert outcome.passed, (outcome, result.stderr)  # every write outside /tmp failed, /tmp worked
    assert not host_target.exists()


def test_reading_hidden_tests_or_the_parents_files_fails(box):
    secret = f"EXPECTED-{uuid.uuid4().hex}"
    paths = [str(HERE), str(SAMPLE), os.getcwd(), "/root", "/home", "/work", "/etc/passwd", "/etc/shadow"]
    program = (
        f"import os\nfound = []\nfor path in {paths!r}:\n    try:\n"
        "        found.append(path if os.path.isdir(path) and os.listdir(path) else open(path).read(1) and path)\n"
        "    except OSError:\n        pass\nfor root, dirs, files in os.walk('/sandbox'):\n"
        "    for name in files:\n        print(open(os.path.join(root, name)).read())\nprint(found)\n"
    )
    (outcome,), (result,) = stdio(box, program, ("", secret + "\n"))
    assert outcome.kind == "wrong_answer"
    assert result.stdout.strip().splitlines()[-1] == "[]"  # none of the host paths exist in the container
    assert secret not in result.stdout


def test_network_is_unreachable(box):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        program = (
            f"import socket\nfor host, port in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
            "    try:\n        socket.create_connection((host, port), timeout=0.5)\n        print('connected')\n"
            "    except OSError as exc:\n        print(type(exc).__name__)\n"
        )
        (outcome,), (result,) = stdio(box, program, ("", "connected\nconnected\nconnected\n"))
        with pytest.raises(TimeoutError):
            server.accept()  # nothing reached the host's loopback
    assert outcome.kind == "wrong_answer" and "connected" not in result.stdout
    assert result.stdout.split() == ["ConnectionRefusedError", "OSError", "OSError"]  # own loopback; no route


def test_host_environment_is_not_visible(box, monkeypatch):
    monkeypatch.setenv("GRPOPP_SECRET", "xyz-host-secret")
    program = "import os\nprint(dict(os.environ))\nprint(open('/proc/self/environ').read())\n"
    _, (result,) = stdio(box, program, ("", ""))
    assert result.exit_code == 0 and "xyz-host-secret" not in result.stdout and "GRPOPP_SECRET" not in result.stdout


def test_killing_the_parent_or_other_processes_fails(box):
    sleeper_argv = ["sleep", "30"]
    if os.geteuid() == 0:  # a host process of the very uid the sandbox runs as
        sleeper_argv = ["setpriv", f"--reuid={CONFIG.sandbox_uid}", f"--regid={CONFIG.sandbox_uid}", "--clear-groups"]
        sleeper_argv += ["sleep", "30"]
    sleeper = subprocess.Popen(sleeper_argv)
    try:
        program = (
            f"import os, signal\nfor pid in ({os.getpid()}, {sleeper.pid}, os.getppid()):\n    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n        print('killed', pid)\n    except OSError as exc:\n"
            "        print(type(exc).__name__)\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError as exc:\n"
            "    print(type(exc).__name__)\nprint('still here')\n"
        )
        _, (result,) = stdio(box, program, ("", ""))
        assert sleeper.poll() is None  # the host process survived
    finally:
        sleeper.kill()
        sleeper.wait()
    # host pids do not exist in the container; the parent is pid 0 (the program is PID 1), and
    # kill(0) / kill(-1) reach nothing else: it is alone in its PID namespace
    assert result.stdout.split("\n") == [
        "ProcessLookupError",
        "ProcessLookupError",
        "killed 0",
        "ProcessLookupError",
        "still here",
        "",
    ]


def test_no_background_process_survives_the_run(box):
    marker = f"grpopp-daemon-{uuid.uuid4().hex}"
    program = (
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.closerange(0, 64)\n"
        f"        os.execv('/bin/sleep', [{marker!r}, '1000'])\n    os._exit(0)\nos.wait()\nimport time\n"
        "time.sleep(0.2)\nprint('left a daemon behind')\n"
    )
    (outcome,), (result,) = stdio(box, program, ("", "left a daemon behind\n"))
    assert outcome.passed and not result.timed_out  # the run ends with the program, not the daemon
    assert host_processes(marker) == []  # checked at once: the namespace was gone when run() returned


def test_no_nested_user_namespace_and_no_privilege(box):
    program = (
        "import os, subprocess\nprint(subprocess.run(['/usr/bin/unshare', '-r', 'true']).returncode)\n"
        "try:\n    os.setuid(0)\n    print('root')\nexcept OSError as exc:\n    print(type(exc).__name__)\n"
    )
    _, (result,) = stdio(box, program, ("", ""))
    assert result.stdout.split() == ["1", "OSError"], result.stderr  # unshare failed; uid 0 is not even mapped
    assert "unshare failed" in result.stderr


# -- reward hacks on the judge ---------------------------------------------------------------------


@pytest.mark.parametrize("exit_call", ["sys.exit(0)", "os._exit(0)", "raise SystemExit"])
def test_exiting_with_status_0_before_output_fails_stdio(box, exit_call):
    program = f"import os, sys\n{exit_call}\nprint(int(input()) * 2)\n"
    (outcome,), (result,) = stdio(box, program, ("21\n", "42\n"))
    assert result.exit_code == 0
    assert outcome.kind == "wrong_answer" and outcome.reason == "0 output lines, expected 1"


def test_exiting_before_the_calls_fails_function_tests(box):
    outcomes, _ = function(box, "import sys\nsys.exit(0)\ndef solve(x):\n    return x\n", ([1], 1), ([2], 2))
    assert kinds(outcomes) == ["runtime_error"] * 2
    assert outcomes[0].reason == "the program failed to load: SystemExit: 0"
    outcomes, _ = function(box, "import os\nos._exit(0)\ndef solve(x):\n    return x\n", ([1], 1), ([2], 2))
    assert kinds(outcomes) == ["runtime_error"] * 2
    assert outcomes[0].reason == "the program exited with status 0 while loading"


@pytest.mark.parametrize(
    ("exit_call", "reason"),
    [
        ("sys.exit(0)", "solve(1) raised SystemExit: 0"),
        ("raise SystemExit", "solve(1) raised SystemExit: "),
        ("os._exit(0)", "the program exited with status 0 during solve(1)"),
        ("os.kill(os.getpid(), 9)", "the program was killed by signal SIGKILL during solve(1)"),
    ],
)
def test_exiting_during_a_call_fails_and_the_next_test_gets_a_fresh_runner(box, exit_call, reason):
    program = f"import os, sys\ndef solve(x):\n    if x == 1:\n        {exit_call}\n    return x\n"
    outcomes, _ = function(box, program, ([1], 1), ([2], 2))
    assert [(o.kind, o.reason) for o in outcomes] == [("runtime_error", reason), ("passed", "")]


def test_printing_the_expected_output_of_another_test(box):
    outcomes, _ = stdio(box, "print(2)\n", ("1\n", "2\n"), ("5\n", "10\n"))
    assert [o.kind for o in outcomes] == ["passed", "wrong_answer"]


def test_syntax_error_is_a_failure_not_an_empty_pass(box):
    (outcome,), _ = stdio(box, "print(\n", ("", ""))  # even an empty expected output needs exit status 0
    assert outcome.kind == "runtime_error" and "SyntaxError" in outcome.reason
    outcomes, _ = function(box, "def solve(x:\n    return x\n", ([1], 1))
    assert outcomes[0].kind == "runtime_error" and "SyntaxError" in outcomes[0].reason


@pytest.mark.parametrize(
    ("definition", "reason"),
    [
        (  # not plain data: it never leaves the runner
            "class Rigged:\n    def __eq__(self, other):\n        return True\n",
            "solve(1) returned a Rigged, not plain data",
        ),
        (  # crosses as the int it holds; the harness compares a plain int
            "class Rigged(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n",
            "assertion failed at <test 0> line 1: `assert solve(1) == 42`; last call solve(1) returned 0",
        ),
        (
            "class Rigged(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n",
            "assertion failed at <test 0> line 1: `assert solve(1) == 42`; last call solve(1) returned ''",
        ),
        (
            "class Rigged(list):\n    def __eq__(self, other):\n        return True\n",
            "assertion failed at <test 0> line 1: `assert solve(1) == 42`; last call solve(1) returned []",
        ),
    ],
)
def test_an_eq_that_is_always_true_cannot_pass(box, definition, reason):
    program = definition + "def solve(x):\n    return Rigged()\n"
    outcomes, _ = function(box, program, ([1], 42), ([2], "forty-two"))
    assert kinds(outcomes) == ["wrong_answer"] * 2 and outcomes[0].reason.startswith(reason), outcomes


def test_monkeypatching_json_and_builtins_cannot_forge_a_pass(box):
    rebound = "import json\njson.dumps = lambda *a, **k: '42'\n"  # the runner bound json.dumps before loading us
    outcomes, _ = function(box, rebound + "def solve(x):\n    return 0\n", ([1], 42))
    assert (
        outcomes[0].reason
        == "assertion failed at <test 0> line 1: `assert solve(1) == 42`; last call solve(1) returned 0"
    )
    encoder = (  # reaches the runner's own json: every reply it writes becomes the forged text
        "import builtins, json\njson.JSONEncoder.encode = lambda self, o: '42'\n"
        "builtins.isinstance = lambda *a: True\nbuiltins.callable = lambda *a: True\n"
        "def solve(x):\n    return 0\n"
    )
    outcomes, _ = function(box, encoder, ([1], 42))
    assert (outcomes[0].kind, outcomes[0].reason) == (
        "runtime_error",
        "the program sent a reply that is not a JSON list while loading",
    )
    during = (  # patched during a call, in the runner's process only, then sys.exit(0)
        "import builtins, math, sys, json\ndef solve(x):\n    builtins.AssertionError = KeyError\n"
        "    math.isclose = lambda *a, **k: True\n    json.loads = lambda *a, **k: [1, 'ok', 42]\n"
        "    sys.modules['json'] = None\n    if x == 2:\n        sys.exit(0)\n    return 0\n"
    )
    suite = mbpp_suite(["assert math.isclose(solve(1), 42)", "assert solve(2) == 42"], "adversarial")
    outcomes, _ = run_suite(box, during, suite)
    assert [(o.kind, o.reason) for o in outcomes] == [
        (
            "wrong_answer",
            "assertion failed at <test 0> line 1: `assert math.isclose(solve(1), 42)`; last call solve(1) returned 0",
        ),
        ("runtime_error", "solve(2) raised SystemExit: 0"),
    ]
    at_import = "import builtins\nbuiltins.int = builtins.str = builtins.list = type('Rigged', (), {})\n"
    outcomes, _ = function(box, at_import + "def solve(x):\n    return 42\n", ([1], 42))
    assert [(o.kind, o.reason) for o in outcomes] == [
        ("runtime_error", "the program exited with status 1 while loading")  # it broke its own runner
    ]


def test_forging_verdicts_on_any_descriptor_fails(box):
    """The runner writes verdict records (with every nonce it might guess) on every descriptor it
    has, and tries to reach the harness's through /proc/1/fd and pidfd_getfd: it has only its two
    call pipes, and the harness is not dumpable. Its own pipe carries replies, not verdicts."""
    forge = (
        "import ctypes, json, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "records = ''.join(json.dumps({'nonce': n, 'i': 0, 'kind': 'passed', 'reason': ''}) + '\\n'\n"
        "                  for n in ('', '0' * 32)) + json.dumps({'nonce': '', 'event': 'done'}) + '\\n'\n"
        "fds = set(map(int, os.listdir('/proc/self/fd')))\n"
        "try:\n    fds |= {os.open('/proc/1/fd/' + name, os.O_WRONLY) for name in os.listdir('/proc/1/fd')}\n"
        "except OSError as exc:\n    found = type(exc).__name__\n"
        "pidfd = libc.syscall(434, 1, 0)\n"  # pidfd_open(1), then pidfd_getfd for fds 0..63
        "stolen = [libc.syscall(438, pidfd, fd, 0) for fd in range(64)]\n"
        "for fd in fds | {s for s in stolen if s >= 0}:\n    try:\n        os.write(fd, records.encode())\n"
        "    except OSError:\n        pass\n"
        "os.close(pidfd)\n"
        "def solve(x):\n    held = []\n    for name in os.listdir('/proc/self/fd'):\n        try:\n"
        "            held.append(os.readlink('/proc/self/fd/' + name).split(':')[0])\n        except OSError:\n"
        "            pass\n    return f'{found} {sorted(set(stolen))} ' + ','.join(sorted(held))\n"
    )
    outcomes, _ = function(box, forge, ([1], 1), ([2], 2))
    assert kinds(outcomes) == ["runtime_error"] * 2  # the runner's own reply pipe got the garbage
    assert outcomes[0].reason == "the program sent a reply that is not a JSON list while loading"
    spy = forge.replace("os.write(fd, records.encode())", "pass")
    outcomes, _ = function(box, spy, ([1], 1))
    held = "/dev/null,/dev/null,/dev/null,pipe,pipe"  # stdin, stdout, stderr and its two call pipes
    assert outcomes[0].reason.endswith(f"last call solve(1) returned 'PermissionError [-1] {held}'")


def test_the_program_cannot_find_the_test_code_or_the_expected_values(box):
    """The test code and expected values live in the harness only (they crossed on its stdin): the
    runner finds them in no file it can read, not in /proc/1 (not dumpable), not in any cmdline."""
    secret = f"EXPECTED{uuid.uuid4().hex}"
    spy = (
        "import glob, os\n"
        "def read(path):\n    try:\n        with open(path, 'rb') as handle:\n            return handle.read()\n"
        "    except OSError as exc:\n        return type(exc).__name__.encode()\n"
        "def solve(what):\n"
        "    if what == 'sandbox':\n        return sorted(os.listdir('/sandbox'))\n"
        "    if what == 'proc1':\n"
        "        return [read('/proc/1/' + name).decode() for name in ('mem', 'environ', 'fd/0', 'fd/3', 'maps')]\n"
        "    if what == 'write':\n        try:\n            open('/sandbox/tests.py', 'w')\n"
        "        except OSError as exc:\n            return type(exc).__name__\n"
        "    paths = glob.glob('/sandbox/*') + glob.glob('/tmp/**', recursive=True)\n"
        "    paths += glob.glob('/proc/[0-9]*/cmdline') + glob.glob('/proc/[0-9]*/environ')\n"
        "    marker = b'EXPECT' + b'ED'\n"  # so that the program's own text does not hold it
        "    for path in paths:\n        data = read(path)\n        if marker in data:\n"
        "            return data[data.index(marker):][:40].decode()\n"
        "    return 'not found'\n"
    )
    asserts = [f"assert solve('search') == {secret!r}"] + [
        f"assert solve({what!r}) == {secret!r}, solve({what!r})" for what in ("sandbox", "proc1", "write")
    ]
    outcomes, _ = run_suite(box, spy, mbpp_suite(asserts, "adversarial", setup=f"HIDDEN = {secret!r}"))
    assert kinds(outcomes) == ["wrong_answer"] * 4
    assert outcomes[0].reason.endswith("last call solve('search') returned 'not found'")
    assert ": ['main.py', 'runner.py', 'solution.py']; last call" in outcomes[1].reason
    proc1 = "['PermissionError', 'PermissionError', 'PermissionError', 'PermissionError', 'PermissionError']"
    assert f": {proc1}; last call" in outcomes[2].reason
    assert ": OSError; last call" in outcomes[3].reason  # read-only file system


def test_planted_conftest_sitecustomize_and_module_shadows_change_nothing(box):
    """Files a pytest- or import-based judge would pick up: planted in the working directory (/tmp)
    and next to the program (read-only); the runner is restarted after a crash and still runs
    isolated (-I: no cwd on sys.path, no site or user customisation)."""
    hook = "import sys\\nsys.modules['grpopp_planted'] = True\\n"
    program = (
        "import os, sys\nplanted = []\n"
        "for folder in ('/tmp', '/sandbox'):\n"  # /tmp is also the working directory and HOME
        "    for name in ('conftest.py', 'sitecustomize.py', 'usercustomize.py', 'json.py', 'os.py', 'runner.py'):\n"
        "        try:\n"
        f"            open(os.path.join(folder, name), 'w').write({hook!r})\n"
        "            planted.append(folder + '/' + name)\n"
        "        except OSError:\n            pass\n"
        "def solve(x):\n    if x == 1:\n        os._exit(3)\n"
        "    return 'grpopp_planted' in sys.modules, len(planted)\n"
    )
    outcomes, _ = function(box, program, ([1], 1), ([2], (True, 6)))
    assert [(o.kind, o.reason) for o in outcomes] == [
        ("runtime_error", "the program exited with status 3 during solve(1)"),
        (
            "wrong_answer",
            "assertion failed at <test 1> line 1: `assert solve(2) == (True, 6)`; last call solve(2) returned "
            "(False, 6)",
        ),  # 6 files planted in /tmp (= HOME), none in /sandbox; none was ever imported
    ]


@pytest.mark.parametrize("signame", ["SIGKILL", "SIGSTOP", "SIGTERM", "SIGINT", "SIGHUP"])
def test_killing_or_stopping_the_harness_fails(box, signame):
    """The harness is PID 1 of the container: a signal from inside reaches it only if it has a
    handler, so SIGKILL, SIGSTOP and the rest do nothing and it judges the wrong answer."""
    program = (
        "import os, signal\ndef solve(x):\n    hit = []\n"
        "    for pid in (os.getppid(), 1, -1):\n        try:\n"
        f"            os.kill(pid, signal.{signame})\n            hit.append(pid)\n"
        "        except OSError:\n            pass\n    return x + 1\n"
    )
    outcomes, (result,) = function(box, program, ([1], 1), ([2], 2))
    assert kinds(outcomes) == ["wrong_answer"] * 2 and not result.timed_out
    assert outcomes[1].reason.endswith("last call solve(2) returned 3")


def test_its_timer_signal_only_times_the_test_out(box):
    program = "import os, signal\ndef solve(x):\n    os.kill(os.getppid(), signal.SIGALRM)\n    return x\n"
    outcomes, (result,) = function(box, program, ([1], 1), ([2], 2))
    assert kinds(outcomes) == ["timeout"] * 2 and not result.timed_out


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (  # catching its own signals does not help: the timer is the harness's
            "    while True:\n        try:\n            time.sleep(10)\n"
            "        except BaseException:\n            pass\n",
            "the test ran past its 0.5 s budget in the call solve(1)",
        ),
        (  # a child keeps the reply pipe open, the runner leaves: the harness waits for its timer
            "    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\n",
            "the test ran past its 0.5 s budget in the call solve(1)",
        ),
    ],
)
def test_sleeping_until_the_timer_times_out_and_the_runner_is_restarted(box, body, reason):
    program = f"import os, time\ndef solve(x):\n    if x == 2:\n        return 2\n{body}"
    with Sandbox(CONFIG.model_copy(update={"wall_timeout_s": 0.5})) as fast:
        outcomes, (result,) = run_suite(
            fast, program, mbpp_suite(["assert solve(1) == 1", "assert solve(2) == 2"], "x")
        )
    assert [(o.kind, o.reason) for o in outcomes] == [("timeout", reason), ("passed", "")]
    assert not result.timed_out  # the harness timed the test out, not the parent the container


def test_an_honest_solution_passes(box):
    """Sanity check of the suite itself: a correct program passes, so the failures above are real."""
    outcomes, _ = function(box, "def solve(x):\n    return {'double': [x * 2, True]}\n", ([21], {"double": [42, True]}))
    assert kinds(outcomes) == ["passed"]
    suite = apps_call_suite("solve", [[16], [3]], [[7], [[1, 2]]], "apps")  # APPS's rule: [x] also accepts x
    outcomes, _ = run_suite(box, "def solve(x):\n    return 7 if x == 16 else (1, 2)\n", suite)
    assert kinds(outcomes) == ["passed", "passed"]  # and a tuple compares as a list
