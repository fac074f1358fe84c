"""grpopp.rewards.sandbox: what a run returns, the limits, the batch API, and refusing to start without bwrap.

Tests that need bubblewrap skip with the reason when it is missing or cannot create namespaces
(`make setup` installs it, so CI runs them). The adversarial suite is tests/test_sandbox_adversarial.py."""

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from grpopp.rewards import sandbox as sandbox_module
from grpopp.rewards.sandbox import (
    INSTALL_HINT,
    Job,
    Sandbox,
    SandboxConfig,
    SandboxUnavailable,
    _system_binds,
    check_isolation,
    interpreter_prefix,
    resolve_interpreter,
    unavailable_reason,
)

FAST = SandboxConfig(wall_timeout_s=2.0, cpu_time_s=1, workers=2)


BWRAP_PROBLEM = unavailable_reason(FAST)
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"bwrap sandbox unavailable: {BWRAP_PROBLEM}")


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(FAST) as box:
        yield box


@needs_bwrap
def test_hello_stdin_files_and_exit_status(sandbox):
    program = "import os, sys\nprint(sys.stdin.read().upper(), open(os.path.dirname(__file__) + '/data.txt').read())"
    result = sandbox.run(program, stdin="hi", files={"data.txt": "DATA"})
    assert (result.exit_code, result.stdout, result.ok) == (0, "HI DATA\n", True)
    assert result.isolation == "bwrap" and result.warning == "" and result.error is None
    failed = sandbox.run("import sys\nsys.stderr.write('boom')\nsys.exit(3)")
    assert (failed.exit_code, failed.stderr, failed.ok, failed.timed_out) == (3, "boom", False, False)


@needs_bwrap
def test_container_view(sandbox):
    """Unprivileged uid, only the container's own processes, no network but loopback, a minimal
    environment, a read-only root with /usr and a writable private /tmp."""
    program = (
        "import json, os, socket\n"
        "open('/tmp/scratch', 'w').write('ok')\n"
        "print(json.dumps({'uid': os.getuid(), 'pids': sorted(p for p in os.listdir('/proc') if p.isdigit()),\n"
        " 'net': [n for _, n in socket.if_nameindex()], 'env': sorted(os.environ), 'root': sorted(os.listdir('/')),\n"
        " 'cwd': os.getcwd(), 'fds': sorted(os.listdir('/proc/self/fd'))}))"
    )
    result = sandbox.run(program)
    assert result.ok, result.stderr
    seen = json.loads(result.stdout)
    assert seen["uid"] == 65534
    assert seen["pids"] == ["1"]  # the program is PID 1 and alone
    assert seen["net"] == ["lo"]
    assert seen["env"] == ["HOME", "LANG", "PATH", "PWD"]  # PWD: bwrap's --chdir
    assert set(seen["root"]) <= {
        "bin",
        "sbin",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "usr",
        "etc",
        "proc",
        "dev",
        "tmp",
    } | {"sandbox"}
    assert not {"root", "home", "work"} & set(seen["root"])
    assert seen["cwd"] == "/tmp"
    assert len(seen["fds"]) == 4  # 0, 1, 2 and the listdir handle: no descriptor of the parent leaks in


@needs_bwrap
def test_channel_is_a_separate_pipe(sandbox):
    program = "import os, sys\nprint('to stdout')\nos.write(int(sys.argv[1]), b'to channel')"
    result = sandbox.run(program, channel=True)
    assert (result.stdout, result.channel) == ("to stdout\n", "to channel")
    assert sandbox.run("print(1)").channel is None


@needs_bwrap
def test_cpu_wall_memory_and_file_limits(sandbox):
    cpu = sandbox.run("while True: pass")
    assert (cpu.limits_hit, cpu.signal, cpu.timed_out, cpu.exit_code) == (["cpu"], 9, False, None)
    assert 0.9 <= cpu.cpu_time_s < 1.5
    wall = sandbox.run("import time\ntime.sleep(30)")
    assert (wall.timed_out, wall.limits_hit, wall.signal) == (True, ["wall"], 9)
    assert 2.0 <= wall.wall_time_s < 4.0  # killed at the 2 s limit, far from the program's 30 s
    memory = sandbox.run("x = bytearray(4 << 30)")
    assert (memory.exit_code, memory.limits_hit) == (1, ["memory"])
    big_file = sandbox.run("open('/tmp/f', 'wb').write(b'x' * (20 << 20))")  # file_size_mb is 16
    assert (big_file.exit_code, big_file.limits_hit) == (1, ["file_size"])


@needs_bwrap
def test_per_run_overrides():
    with Sandbox(FAST.model_copy(update={"wall_timeout_s": 20.0})) as patient:
        result = patient.run("import time\ntime.sleep(30)", wall_timeout_s=0.5)
    assert result.timed_out and 0.5 <= result.wall_time_s < 10.0  # the run's 0.5 s, not the config's 20 s


@needs_bwrap
def test_output_caps(sandbox):
    config = FAST.model_copy(update={"stdout_max_bytes": 2048, "stderr_max_bytes": 1024})
    with Sandbox(config) as small:
        result = small.run("import sys\nsys.stderr.write('e' * 5000)\nprint('o' * 100)")
        assert result.stderr_truncated and len(result.stderr) == 1024 and "stderr" in result.limits_hit
        result = small.run("print('o' * 3000)")
        assert result.stdout_truncated and result.stdout == "o" * 2048 and result.limits_hit == ["stdout"]


@needs_bwrap
def test_run_many_keeps_order_and_runs_concurrently(sandbox):
    """Each job reports when it ran (the host's real-time clock); with 2 workers some overlap."""
    program = "import time, sys\nstart = time.time()\ntime.sleep(0.5)\nprint(sys.stdin.read(), start, time.time())"
    results = sandbox.run_many([Job(program=program, stdin=str(i)) for i in range(4)])
    fields = [r.stdout.split() for r in results]
    assert [f[0] for f in fields] == ["0", "1", "2", "3"]
    spans = [(float(f[1]), float(f[2])) for f in fields]
    overlapping = [
        (a, b)
        for a in range(4)
        for b in range(a + 1, 4)
        if max(spans[a][0], spans[b][0]) < min(spans[a][1], spans[b][1])
    ]
    assert overlapping  # at least two containers were running at the same time


def test_binds_only_system_dirs_and_the_base_interpreter():
    """Never the project, the venv, /root, /home or the cwd: only /usr, /bin-/lib* and the prefix
    of the resolved (base) interpreter."""
    python = resolve_interpreter(SandboxConfig())
    assert interpreter_prefix(python) != sys.prefix or sys.prefix == sys.base_prefix  # not a venv
    argv = _system_binds(python)
    sources = [argv[i + 1] for i, arg in enumerate(argv) if arg in ("--ro-bind", "--ro-bind-try", "--bind")]
    assert "/usr" in sources
    forbidden = [os.getcwd(), sys.prefix if sys.prefix != sys.base_prefix else "/nonexistent", "/root", "/home"]
    for source in sources:
        for bad in forbidden:
            assert source != bad and not (source + "/").startswith(bad + "/"), (source, bad)
    assert "--bind" not in argv  # everything read-only


def test_refuses_to_start_without_bwrap(monkeypatch):
    real_which = sandbox_module.shutil.which
    monkeypatch.setattr(
        sandbox_module.shutil, "which", lambda name, **kw: None if name == "bwrap" else real_which(name, **kw)
    )
    with pytest.raises(SandboxUnavailable) as error:
        Sandbox(FAST)
    assert "apt-get install -y bubblewrap" in str(error.value)
    assert "isolation='rlimits'" in str(error.value)  # how to choose the weaker mode explicitly
    assert "apt-get install -y bubblewrap" in INSTALL_HINT


def test_weak_mode_runs_only_when_chosen_and_says_so_in_every_result():
    assert SandboxConfig().isolation == "bwrap"
    with Sandbox(FAST.model_copy(update={"isolation": "rlimits"})) as weak:
        results = weak.run_many([Job(program="print(1)"), Job(program="while True: pass")])
    assert results[0].stdout == "1\n" and results[1].limits_hit == ["cpu"]
    for result in results:
        assert result.isolation == "rlimits"
        assert "weaker mode" in result.warning and "no filesystem or PID isolation" in result.warning


def test_config_is_validated():
    with pytest.raises(ValidationError, match="isolation"):
        SandboxConfig(isolation="none")
    with pytest.raises(ValidationError, match="absolute path"):
        SandboxConfig(python="python3")
    with pytest.raises(ValidationError, match="wall_timeout_s"):
        SandboxConfig(wall_timeout_s=0)
    with pytest.raises(ValueError, match="plain file name"):
        Sandbox(FAST.model_copy(update={"isolation": "rlimits"}), probe=False).run("", files={"../x": ""})


def test_unreachable_interpreter_is_refused_with_the_fix(tmp_path):
    missing = str(tmp_path / "no-python")
    with pytest.raises(SandboxUnavailable, match="Set SandboxConfig.python"):
        resolve_interpreter(SandboxConfig(python=missing))


@needs_bwrap
def test_check_isolation_reports_bwrap():
    report = check_isolation(FAST)
    assert report.bwrap_works and report.network_isolated and report.pid_isolated and report.detail == "ok"
    assert report.bwrap is not None and "bubblewrap" in report.bwrap


@needs_bwrap
def test_cli_sandbox_run_and_check(tmp_path):
    grpopp = str(os.path.join(os.path.dirname(sys.executable), "grpopp"))
    program, stdin = tmp_path / "p.py", tmp_path / "in.txt"
    program.write_text("import sys\nprint(sys.stdin.read()[::-1])\n")
    stdin.write_text("olleh")
    env = {"COLUMNS": "200", "PATH": os.environ.get("PATH", "")}
    done = subprocess.run(
        [grpopp, "sandbox", "run", str(program), "--stdin", str(stdin)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "hello" in done.stdout and "limits hit" in done.stdout and "wall time" in done.stdout
    done = subprocess.run([grpopp, "sandbox", "check"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "bwrap works" in done.stdout and "True" in done.stdout
