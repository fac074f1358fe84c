"""Run untrusted programs (a model's code) in an OS-isolated sandbox: one fresh bubblewrap container each.

Why bubblewrap: it is an apt-installable binary (Debian package ``bubblewrap``) that builds a
container from Linux namespaces without a daemon or root, so grpopp needs no cloud sandbox and no
separate service. Every program runs in a fresh container:

1. **Namespaces**: ``--unshare-all`` (user, mount, PID, network, IPC, UTS, cgroup), and
   ``--disable-userns``: the program cannot create nested user namespaces. No network (only a
   downed loopback); ``/proc`` is a new procfs that shows the container's processes only.
2. **Filesystem**: an empty tmpfs root with ``/usr`` (and the ``/bin``, ``/lib*`` links or dirs)
   bound read-only, ``/etc/ld.so.cache`` if present, the interpreter's own prefix when it lies
   outside ``/usr`` (its real, resolved prefix: never a virtual environment), a private ``/tmp``
   tmpfs of ``tmpfs_mb``, and ``/sandbox`` holding the program and its files, copied in read-only
   from in-memory files (``memfd``, ``--ro-bind-data``). The project directory, the venv, ``/root``,
   ``/home`` and the caller's cwd are never bound. The ``/tmp`` contents vanish with the container.
3. **Environment**: ``--clearenv``, then PATH, HOME=/tmp and LANG only; Python runs with ``-I -S``
   (isolated: no PYTHON* variables, no user or site directories, no cwd on ``sys.path``).
4. **User**: uid/gid 65534 inside. When the caller is root, bwrap itself is started as host uid
   ``sandbox_uid`` by util-linux ``setpriv`` (which also sets a parent-death signal, so a
   container never outlives a killed parent). Why: the kernel exempts processes whose real uid is
   root from RLIMIT_NPROC (``copy_process``: ``real_cred->user != INIT_USER``), and with
   ``--unshare-user --uid 65534`` started by root the host uid stays 0, so a fork bomb would not be
   stopped. (A consequence: an interpreter under ``/root`` cannot be bound, bwrap resolves bind
   sources with ``realpath`` as the unprivileged user; ``/usr/bin/python3`` is used then.)
5. **rlimits** on CPU seconds, address space, file size, open files and processes are set by
   util-linux ``prlimit``, which execs the interpreter: no ``preexec_fn`` (documented unsafe
   with threads) and no second interpreter start-up. RLIMIT_NPROC is counted per user namespace
   since Linux 5.14 ("Reimplement RLIMIT_NPROC on top of ucounts", kernel/ucount.c
   ``is_rlimit_overlimit``): each container has a user namespace of its own, so concurrent
   containers that share host uid ``sandbox_uid`` do not share one process budget (tested in
   tests/test_sandbox_adversarial.py). Each level up is checked against the limit the namespace's
   creator had (root's here, normally unlimited). Before 5.14 the count is per host uid, so
   concurrent containers would share ``processes``; ``grpopp sandbox check`` reports which.
6. **Wall clock**: the parent owns it. It waits on the pipes and a pidfd with one deadline and on
   expiry SIGKILLs the container's PID 1 through a pidfd (no pid-reuse race). The program itself
   is PID 1 (``--as-pid-1``): when it exits or is killed, the kernel kills every other process of
   the PID namespace before PID 1 can be reaped, and the outer bwrap reaps it and only then exits.
   So when ``run`` returns, no process of the container is left (double-forked daemons included),
   and the outer bwrap's rusage covers the program's CPU time. (Its peak RSS does not mean much:
   the vfork'ed launcher inherits the parent's RSS high-water mark, so it is not reported.) With bwrap's own reaper
   as PID 1 instead, bwrap exits as soon as the program does and the namespace is torn down after
   ``run`` returned. As PID 1 the program ignores signals it has no handler for that come from
   inside the namespace, and the kernel's SIGXCPU too, so the CPU limit is hard (SIGKILL).
   ``--die-with-parent`` and ``setpriv --pdeathsig`` cover a parent that dies (they fire when the
   *thread* that started the container exits; ``run`` blocks in that thread until it is gone),
   ``--new-session`` blocks TIOCSTI.
7. **Output caps**: stdout, stderr and the result channel are read in chunks into buffers of at
   most their cap; past the cap the container is killed and the result says truncated. 1 GB of
   output costs the parent one cap of memory, not 1 GB. RLIMIT_FSIZE and the tmpfs size cap files.

Not bounded: total memory of all processes of one container (processes x address space), since
that needs a delegated cgroup; keep ``processes`` small. A memory limit hit is reported from the
interpreter's ``MemoryError`` on stderr (a heuristic label; such a run fails either way).

``isolation="rlimits"`` is the weaker mode, for machines without bwrap, and must be chosen
explicitly: the same rlimits, a cleared environment, the unprivileged uid, a fresh temporary
working directory and ``unshare --user --net`` when user namespaces work, but no filesystem or PID
isolation: the program can read what uid ``sandbox_uid`` can read on the host, and a process that
calls ``setsid`` escapes the process-group kill. Every result says so in ``warning``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import resource
import select
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, model_validator

Isolation: TypeAlias = Literal["bwrap", "rlimits"]
LimitName: TypeAlias = Literal["wall", "cpu", "memory", "file_size", "processes", "stdout", "stderr", "channel"]

INSTALL_HINT = (
    "install bubblewrap: `apt-get install -y bubblewrap` (Debian/Ubuntu; `make setup` does it when run as root), "
    "`dnf install bubblewrap` (Fedora); user namespaces must be enabled "
    "(sysctl kernel.unprivileged_userns_clone=1, and on Ubuntu 24.04+ "
    "kernel.apparmor_restrict_unprivileged_userns=0). Or choose the weaker mode explicitly: "
    "SandboxConfig(isolation='rlimits') / --isolation rlimits (no filesystem or PID isolation)."
)
WEAK_WARNING = (
    "isolation=rlimits: weaker mode chosen explicitly; rlimits, cleared environment and unprivileged uid only, "
    "no filesystem or PID isolation"
)
SANDBOX_DIR = "/sandbox"
"""Where the program and its files appear inside a bwrap container (read-only)."""

_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,100}$")
_SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start on this machine; the message says how to install it or how to
    choose the weaker mode explicitly."""


class SandboxConfig(BaseModel):
    """Limits and isolation of one sandbox; every run gets a fresh container with these limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    wall_timeout_s: float = Field(10.0, gt=0.0, le=3600.0)
    """Wall-clock limit of one run, enforced by the parent, which kills the whole container."""

    cpu_time_s: int = Field(5, ge=1, le=3600)
    """RLIMIT_CPU of each process, whole seconds (SIGXCPU at the limit, SIGKILL one second later)."""

    memory_mb: int = Field(1024, ge=64, le=1 << 20)
    """RLIMIT_AS of each process in MiB (virtual address space; thread stacks count too)."""

    file_size_mb: int = Field(16, ge=1, le=1 << 20)
    """RLIMIT_FSIZE in MiB: the largest file a process may write."""

    open_files: int = Field(64, ge=16, le=1 << 20)
    """RLIMIT_NOFILE: open file descriptors per process."""

    processes: int = Field(32, ge=2, le=1 << 16)
    """RLIMIT_NPROC: processes and threads of the container's user (per container on Linux >= 5.14)."""

    tmpfs_mb: int = Field(32, ge=1, le=1 << 20)
    """Size of the container's private writable /tmp (host memory, freed with the container)."""

    stdout_max_bytes: int = Field(1 << 20, ge=1024)
    """Captured stdout cap; past it the run is killed and reported truncated (limit "stdout")."""

    stderr_max_bytes: int = Field(64 << 10, ge=1024)
    """Captured stderr cap; past it the run is killed and reported truncated (limit "stderr")."""

    channel_max_bytes: int = Field(4 << 20, ge=1024)
    """Cap of the result channel (``run(channel=True)``), e.g. the judging harness's verdict records."""

    isolation: Isolation = "bwrap"
    """"bwrap": full container (default). "rlimits": the weaker mode, only when chosen explicitly."""

    python: str | None = None
    """Interpreter for programs. None: this Python's base interpreter (never a venv) when the sandbox
    user can reach its prefix, else /usr/bin/python3. Its resolved prefix is bound read-only."""

    import_site: bool = False
    """Let programs import the interpreter's own site-packages (runs without ``-S``; never the venv's)."""

    workers: int = Field(0, ge=0)
    """Concurrent runs of ``run_many``; 0 = os.cpu_count()."""

    sandbox_uid: int = Field(65534, ge=1)
    """Host uid (and gid) that bwrap runs as when the caller is root, so that RLIMIT_NPROC applies."""

    @model_validator(mode="after")
    def _check(self) -> SandboxConfig:
        if self.python is not None and not os.path.isabs(self.python):
            raise ValueError(f"python: give an absolute path to an interpreter, got {self.python!r}")
        return self

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


class ExecResult(BaseModel):
    """What one sandboxed run did. The verdict (pass/fail) is the caller's, outside the sandbox."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    exit_code: int | None
    """The program's exit status; None when it died of a signal or was killed."""

    signal: int | None = None
    """The signal that ended it (e.g. 9 SIGKILL, 24 SIGXCPU), None otherwise."""

    stdout: str = ""
    """Captured stdout, UTF-8 (invalid bytes replaced), at most ``stdout_max_bytes``."""

    stderr: str = ""
    """Captured stderr, at most ``stderr_max_bytes``."""

    stdout_truncated: bool = False
    stderr_truncated: bool = False

    channel: str | None = None
    """Bytes written to the result channel (``run(channel=True)``), else None."""

    channel_truncated: bool = False

    timed_out: bool = False
    """The parent's wall-clock limit expired and the container was killed."""

    limits_hit: list[LimitName] = []
    """Every limit the run ran into: wall, cpu, output caps (certain); memory, file_size, processes
    (read from the interpreter's error on stderr)."""

    wall_time_s: float = 0.0
    """Wall time of the whole run, container start-up included."""

    cpu_time_s: float = 0.0
    """User + system CPU time of the container's processes that were reaped."""

    isolation: Isolation = "bwrap"
    """The isolation the run had."""

    warning: str = ""
    """Set on every result of the weaker mode (``isolation="rlimits"``)."""

    error: str | None = None
    """Infrastructure failure: the sandbox itself could not run the program. No verdict then."""

    @property
    def ok(self) -> bool:
        """Exit status 0, no timeout, no limit hit, no infrastructure error."""
        return self.exit_code == 0 and not self.timed_out and not self.limits_hit and self.error is None


@dataclass(frozen=True)
class Job:
    """One run for ``Sandbox.run_many``; the fields are ``Sandbox.run``'s arguments."""

    program: str
    stdin: str | bytes = b""
    files: Mapping[str, str | bytes] = field(default_factory=dict)
    channel: bool = False
    wall_timeout_s: float | None = None
    cpu_time_s: int | None = None


@dataclass
class _Capture:
    """A capped output buffer: keeps at most ``limit`` bytes, remembers that more came."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def add(self, chunk: bytes) -> bool:
        """Append; False once the cap is exceeded (the caller then kills the run)."""
        room = self.limit - len(self.data)
        self.data += chunk[: max(room, 0)]
        if len(chunk) > room:
            self.truncated = True
        return not self.truncated

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


class IsolationReport(BaseModel):
    """What ``grpopp sandbox check`` prints: which isolation this machine supports."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    bwrap: str | None
    """Path and version of bwrap, or None when it is not installed."""

    bwrap_works: bool
    """A probe container started and showed the expected isolation."""

    rlimits_works: bool
    """The weaker mode could run a probe program."""

    network_isolated: bool
    """The probe container saw no network interface but a downed loopback."""

    pid_isolated: bool
    """The probe container's /proc showed its own processes only."""

    interpreter: str
    """The interpreter programs run with, and its version."""

    caller_is_root: bool
    """When True, bwrap runs as host uid ``sandbox_uid`` so that RLIMIT_NPROC applies."""

    kernel: str
    nproc_per_user_namespace: bool
    """Linux >= 5.14: RLIMIT_NPROC is counted per container, not per host uid."""

    detail: str
    """What failed and how to fix it, or "ok"."""


class Sandbox:
    """Runs programs in fresh containers; ``run`` for one, ``run_many`` for a batch on a thread pool.

    Construction checks that the chosen isolation works and raises ``SandboxUnavailable`` with the
    fix when it does not; the weaker mode is never chosen silently.
    """

    def __init__(self, config: SandboxConfig | None = None, *, probe: bool = True) -> None:
        self.config = config or SandboxConfig()
        self.python = resolve_interpreter(self.config)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._drop_uid = os.geteuid() == 0
        self._prlimit = _require_tool("prlimit", "util-linux (`apt-get install -y util-linux`)")
        self._setpriv = _require_tool("setpriv", "util-linux (`apt-get install -y util-linux`)")
        self._bwrap = shutil.which("bwrap") or ""
        self._unshare = False
        if self.config.isolation == "bwrap" and not self._bwrap:
            raise SandboxUnavailable(f"bwrap (bubblewrap) is not installed; {INSTALL_HINT}")
        if self.config.isolation == "rlimits":
            self._unshare = _unshare_works()
        if probe:
            result = self.run("print('ok')")
            if result.error is not None or result.stdout.strip() != "ok":
                problem = result.error or f"exit {result.exit_code}, stderr: {result.stderr.strip()[-500:]}"
                raise SandboxUnavailable(
                    f"the {self.config.isolation} sandbox could not run a probe program: {problem}. {INSTALL_HINT}"
                )

    # -- public API ------------------------------------------------------------------------------

    def run(
        self,
        program: str,
        stdin: str | bytes = b"",
        files: Mapping[str, str | bytes] | None = None,
        *,
        channel: bool = False,
        wall_timeout_s: float | None = None,
        cpu_time_s: int | None = None,
    ) -> ExecResult:
        """Run a Python ``program`` with ``stdin`` in a fresh container and return what it did.

        ``files`` are placed read-only beside the program (``os.path.dirname(__file__)``).
        ``channel=True`` gives the program the write end of a pipe that only the parent reads; its
        descriptor number is the program's ``sys.argv[1]``. ``wall_timeout_s`` / ``cpu_time_s``
        override the config for this run (e.g. scaled by the number of calls of a driver).
        """
        for name in files or {}:
            if not _FILE_NAME.match(name) or name == "main.py":
                raise ValueError(
                    f"files: {name!r} is not a plain file name (letters, digits, '_', '-', '.'), or main.py"
                )
        start = time.monotonic()
        try:
            if self.config.isolation == "bwrap":
                result = self._run_bwrap(program, _bytes(stdin), files or {}, channel, wall_timeout_s, cpu_time_s)
            else:
                result = self._run_rlimits(program, _bytes(stdin), files or {}, channel, wall_timeout_s, cpu_time_s)
        except OSError as exc:  # fork/pipe/memfd failures of the parent: no verdict possible
            return ExecResult(
                exit_code=None,
                error=f"sandbox failed to start: {type(exc).__name__}: {exc}",
                isolation=self.config.isolation,
                warning=self._warning(),
                wall_time_s=time.monotonic() - start,
            )
        return result

    def run_many(self, jobs: Sequence[Job]) -> list[ExecResult]:
        """Run ``jobs`` concurrently on ``worker_count`` threads (each waits on its own container);
        results are in the order of ``jobs``."""
        executor = self._pool()
        futures = [
            executor.submit(
                self.run,
                job.program,
                job.stdin,
                job.files,
                channel=job.channel,
                wall_timeout_s=job.wall_timeout_s,
                cpu_time_s=job.cpu_time_s,
            )
            for job in jobs
        ]
        return [future.result() for future in futures]

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one run ---------------------------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.config.worker_count, thread_name_prefix="grpopp-sandbox")
            return self._executor

    def _warning(self) -> str:
        if self.config.isolation == "bwrap":
            return ""
        return WEAK_WARNING + ("" if self._unshare else "; network NOT isolated (user namespaces unavailable)")

    def _interpreter_argv(self, script: str) -> list[str]:
        flags = ["-I", "-B", "-X", "utf8"] + ([] if self.config.import_site else ["-S"])
        return [self.python, *flags, script]

    def _prlimit_argv(self, cpu_time_s: int) -> list[str]:
        """prlimit sets the limits on itself, then execs the interpreter (soft:hard)."""
        cfg = self.config
        mib = 1 << 20
        return [
            self._prlimit,
            f"--cpu={cpu_time_s}",
            f"--as={cfg.memory_mb * mib}",
            f"--fsize={cfg.file_size_mb * mib}",
            f"--nofile={cfg.open_files}",
            f"--nproc={cfg.processes}",
            "--core=0",
            "--",
        ]

    def _launch_argv(self) -> list[str]:
        """util-linux ``setpriv`` execs the container: with a parent-death signal (so a container
        never outlives a parent that was killed), and, when the caller is root, as ``sandbox_uid``.
        (Not ``Popen(user=...)``: that rules out vfork, and forking a parent that holds a model
        copies its page tables on every run.)"""
        argv = [self._setpriv, "--pdeathsig", "KILL"]
        if self._drop_uid:
            uid = self.config.sandbox_uid
            argv += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return [*argv, "--"]

    def _run_bwrap(
        self,
        program: str,
        stdin: bytes,
        files: Mapping[str, str | bytes],
        channel: bool,
        wall_timeout_s: float | None,
        cpu_time_s: int | None,
    ) -> ExecResult:
        cfg = self.config
        with _FdSet() as fds:
            status_read, status_write = fds.pipe()
            argv = [*self._launch_argv(), self._bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
            argv += ["--unshare-user", "--disable-userns"]  # and no nested user namespaces
            argv += ["--as-pid-1"]  # the program is PID 1: see the module docstring, point 6
            argv += ["--json-status-fd", str(status_write)]
            argv += _system_binds(self.python)
            argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(cfg.tmpfs_mb << 20), "--tmpfs", "/tmp"]
            passed = [status_write]
            for name, content in {"main.py": program, **files}.items():
                passed.append(fds.memfd(_bytes(content)))
                argv += ["--ro-bind-data", str(passed[-1]), f"{SANDBOX_DIR}/{name}"]
            argv += ["--remount-ro", "/", "--clearenv", "--setenv", "PATH", _SANDBOX_PATH, "--setenv", "HOME", "/tmp"]
            argv += ["--setenv", "LANG", "C.UTF-8", "--uid", "65534", "--gid", "65534", "--chdir", "/tmp", "--"]
            argv += self._prlimit_argv(cpu_time_s or cfg.cpu_time_s)
            argv += self._interpreter_argv(f"{SANDBOX_DIR}/main.py")
            env = {"PATH": _SANDBOX_PATH}
            outcome = self._execute(fds, argv, stdin, passed, channel, "/", env, status_read, wall_timeout_s)
        return self._result(outcome, wall_timeout_s, cpu_time_s)

    def _run_rlimits(
        self,
        program: str,
        stdin: bytes,
        files: Mapping[str, str | bytes],
        channel: bool,
        wall_timeout_s: float | None,
        cpu_time_s: int | None,
    ) -> ExecResult:
        cfg = self.config
        workdir = tempfile.mkdtemp(prefix="grpopp-sandbox-")
        try:
            for name, content in {"main.py": program, **files}.items():
                Path(workdir, name).write_bytes(_bytes(content))
                os.chmod(Path(workdir, name), 0o444)
            if self._drop_uid:
                os.chown(workdir, cfg.sandbox_uid, cfg.sandbox_uid)
            argv = self._launch_argv() + (["unshare", "--user", "--net", "--"] if self._unshare else [])
            argv += self._prlimit_argv(cpu_time_s or cfg.cpu_time_s)
            argv += self._interpreter_argv(os.path.join(workdir, "main.py"))
            with _FdSet() as fds:
                env = {"PATH": _SANDBOX_PATH, "HOME": workdir, "LANG": "C.UTF-8"}
                outcome = self._execute(fds, argv, stdin, [], channel, workdir, env, -1, wall_timeout_s)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return self._result(outcome, wall_timeout_s, cpu_time_s)

    def _execute(
        self,
        fds: _FdSet,
        argv: list[str],
        stdin: bytes,
        passed: list[int],
        channel: bool,
        cwd: str,
        env: dict[str, str],
        status_fd: int,
        wall_timeout_s: float | None,
    ) -> _Outcome:
        """Add the result channel (its fd number is the program's last argument), start the process
        with the ``passed`` descriptors, close the parent's copies of them, and wait for the run."""
        channel_read = -1
        if channel:
            channel_read, channel_write = fds.pipe()
            passed, argv = [*passed, channel_write], [*argv, str(channel_write)]
        process = subprocess.Popen(
            argv,
            stdin=fds.memfd(stdin),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=passed,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        for fd in passed:  # the child holds them now; the parent keeps only the read ends, so
            fds.close(fd)  # that EOF on a pipe means every writer is gone
        return _Waiter(process, self.config, status_fd, channel_read).wait(wall_timeout_s or self.config.wall_timeout_s)

    def _result(self, outcome: _Outcome, wall_timeout_s: float | None, cpu_time_s: int | None) -> ExecResult:
        """Decode the exit status and name the limits that were hit."""
        cfg = self.config
        cpu_limit = cpu_time_s or cfg.cpu_time_s
        exit_code, sig = _decode_status(outcome.returncode, bwrap=cfg.isolation == "bwrap")
        error = None
        if cfg.isolation == "bwrap" and not outcome.killed and not outcome.status_has_exit:
            # bwrap writes {"exit-code": N} only once the sandboxed command ran and exited; without it
            # the container never started (a program cannot forge this: the status fd is bwrap's own).
            said = outcome.stderr.text()[-800:].strip()
            error = f"bwrap could not set up the container (exit {outcome.returncode}): {said}"
        limits: list[LimitName] = []
        if outcome.timed_out:
            limits.append("wall")
        if sig in (signal.SIGXCPU, signal.SIGKILL) and outcome.cpu_time_s >= cpu_limit - 0.05 and not outcome.killed:
            limits.append("cpu")
        for name, capture in (("stdout", outcome.stdout), ("stderr", outcome.stderr), ("channel", outcome.channel)):
            if capture is not None and capture.truncated:
                limits.append(name)  # type: ignore[arg-type]
        limits += _limits_from_stderr(outcome.stderr.text())
        return ExecResult(
            exit_code=None if outcome.killed else exit_code,
            signal=signal.SIGKILL if outcome.killed else sig,
            stdout=outcome.stdout.text(),
            stderr=outcome.stderr.text(),
            stdout_truncated=outcome.stdout.truncated,
            stderr_truncated=outcome.stderr.truncated,
            channel=outcome.channel.text() if outcome.channel is not None else None,
            channel_truncated=outcome.channel is not None and outcome.channel.truncated,
            timed_out=outcome.timed_out,
            limits_hit=limits,
            wall_time_s=outcome.wall_time_s,
            cpu_time_s=outcome.cpu_time_s,
            isolation=cfg.isolation,
            warning=self._warning(),
            error=error,
        )


@dataclass
class _Outcome:
    returncode: int
    stdout: _Capture
    stderr: _Capture
    channel: _Capture | None
    timed_out: bool
    killed: bool
    """The parent killed the run (timeout or an output cap)."""
    status_has_exit: bool
    wall_time_s: float
    cpu_time_s: float


class _Waiter:
    """The parent's side of one run: reads every pipe into its capped buffer and waits on a pidfd,
    all with one deadline; kills the container when the deadline passes or a cap is exceeded."""

    def __init__(self, process: subprocess.Popen[bytes], cfg: SandboxConfig, status_fd: int, channel_fd: int) -> None:
        self.process = process
        self.start = time.monotonic()
        self.stdout = _Capture(cfg.stdout_max_bytes)
        self.stderr = _Capture(cfg.stderr_max_bytes)
        self.channel = _Capture(cfg.channel_max_bytes) if channel_fd >= 0 else None
        self.status = _Capture(64 << 10)
        if process.stdout is None or process.stderr is None:
            raise ValueError("the sandbox process needs stdout=PIPE and stderr=PIPE")
        self.captures: dict[int, _Capture] = {
            process.stdout.fileno(): self.stdout,
            process.stderr.fileno(): self.stderr,
        }
        if self.channel is not None:
            self.captures[channel_fd] = self.channel
        if status_fd >= 0:
            self.captures[status_fd] = self.status
        self.inner_pidfd = -1
        self.killed = False
        self.timed_out = False

    def wait(self, timeout_s: float) -> _Outcome:
        pidfd = os.pidfd_open(self.process.pid)
        try:
            self._pump(pidfd, self.start + timeout_s)
        except BaseException:
            self.killed = True  # never leave a container behind, whatever went wrong here
            raise
        finally:
            self._kill()  # after an exit too: leftovers of the process group (rlimits mode); the
            returncode, rusage = self._reap(pidfd)  # outer process is at most a zombie here, so its
            os.close(pidfd)  # pgid cannot have been reused
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
            self._close_inner()
        return _Outcome(
            returncode=returncode,
            stdout=self.stdout,
            stderr=self.stderr,
            channel=self.channel,
            timed_out=self.timed_out,
            killed=self.killed or self.timed_out,
            status_has_exit='"exit-code"' in self.status.text(),
            wall_time_s=time.monotonic() - self.start,
            cpu_time_s=rusage.ru_utime + rusage.ru_stime,
        )

    def _pump(self, pidfd: int, deadline: float) -> None:
        """Read every pipe until the process has exited and the pipes are at EOF, the deadline
        passes (timed out) or a cap is exceeded (killed)."""
        selector = selectors.DefaultSelector()
        try:
            for fd in self.captures:
                os.set_blocking(fd, False)
                selector.register(fd, selectors.EVENT_READ)
            selector.register(pidfd, selectors.EVENT_READ)
            exited = False
            while not exited or len(selector.get_map()) > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.timed_out = not exited  # exited but pipes held open: a leftover process, killed
                    return
                if exited and remaining > 1.0:  # the program is gone: its pipes end at once unless a
                    deadline = time.monotonic() + 1.0  # process it left behind holds them (rlimits mode)
                for key, _ in selector.select(remaining):
                    fd = int(key.fd)
                    if fd == pidfd:
                        exited = True
                        selector.unregister(fd)
                    elif not self._read(selector, fd):
                        return
        finally:
            selector.close()

    def _read(self, selector: selectors.BaseSelector, fd: int) -> bool:
        """Read one chunk; False when a cap was exceeded (the run is then killed)."""
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        capture = self.captures[fd]
        if not chunk:
            selector.unregister(fd)
            return True
        if capture is self.status:
            capture.add(chunk)
            self._open_inner_pidfd()
            return True
        if not capture.add(chunk):
            self.killed = True
            return False
        return True

    def _open_inner_pidfd(self) -> None:
        """bwrap's first status line names the container's PID 1 (as seen from the host); hold a
        pidfd on it so that the kill below can never hit a recycled pid."""
        if self.inner_pidfd >= 0:
            return
        match = re.search(rb'"child-pid":\s*(\d+)', bytes(self.status.data))
        if match:
            with contextlib.suppress(ProcessLookupError):
                self.inner_pidfd = os.pidfd_open(int(match.group(1)))

    def _kill(self) -> None:
        """SIGKILL the container's PID 1: the kernel kills every process of its PID namespace before
        PID 1 can be reaped, and the outer bwrap exits once it has reaped it, so after ``_reap`` no
        process of the container is left. Without a PID 1 (rlimits mode, or bwrap still setting
        up): SIGKILL the process group."""
        if self.inner_pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.inner_pidfd, signal.SIGKILL)
        else:
            self._kill_group()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def _reap(self, pidfd: int) -> tuple[int, resource.struct_rusage]:
        """Wait for the outer process and take its rusage, which includes every container process
        that was reaped below it. If it does not exit within 5 s of the kill, kill its group too."""
        ready, _, _ = select.select([pidfd], [], [], 5.0)
        if not ready:
            self.killed = True
            self._kill_group()
        _, status, rusage = os.wait4(self.process.pid, 0)
        returncode = os.waitstatus_to_exitcode(status)
        self.process.returncode = returncode  # the Popen object must not wait again
        return returncode, rusage

    def _close_inner(self) -> None:
        if self.inner_pidfd >= 0:
            os.close(self.inner_pidfd)
            self.inner_pidfd = -1


# -- helpers ---------------------------------------------------------------------------------------


def _bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


class _FdSet:
    """The descriptors one run opened, each closed exactly once. (Closing one twice is a real bug
    with threads: between the two closes another thread may get the same number for a new pipe.)"""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        read, write = os.pipe()  # close-on-exec; pass_fds hands an end to our own child only
        self.open.update((read, write))
        return read, write

    def memfd(self, data: bytes) -> int:
        """An anonymous in-memory file holding ``data``, positioned at its start (close-on-exec)."""
        fd = os.memfd_create("grpopp-sandbox", os.MFD_CLOEXEC)
        self.open.add(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def close(self, fd: int) -> None:
        if fd in self.open:
            self.open.discard(fd)
            os.close(fd)

    def __enter__(self) -> _FdSet:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in list(self.open):
            self.close(fd)


def _decode_status(returncode: int, bwrap: bool) -> tuple[int | None, int | None]:
    """(exit code, signal). bwrap reports a child killed by signal N as exit status 128 + N
    (``propagate_exit_status`` in bubblewrap's bwrap.c), like a shell; a program exiting with 130
    itself reads the same, and fails either way."""
    if returncode < 0:
        return None, -returncode
    if bwrap and 128 < returncode < 128 + 65:
        return None, returncode - 128
    return returncode, None


_STDERR_LIMITS: tuple[tuple[LimitName, re.Pattern[str]], ...] = (
    ("memory", re.compile(r"^MemoryError\b", re.MULTILINE)),
    ("file_size", re.compile(r"\[Errno 27\] File too large")),
    ("processes", re.compile(r"BlockingIOError: \[Errno 11\] Resource temporarily unavailable")),
)


def _limits_from_stderr(stderr: str) -> list[LimitName]:
    """Limits the interpreter reported as exceptions (labels only: the run failed anyway)."""
    return [name for name, pattern in _STDERR_LIMITS if pattern.search(stderr)]


def _require_tool(name: str, package: str) -> str:
    path = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        raise SandboxUnavailable(f"`{name}` is missing; the sandbox needs it (rlimits, uid switch). Install {package}")
    return path


def _system_binds(python: str) -> list[str]:
    """Read-only binds of what the interpreter needs: /usr, the /bin, /lib* links or dirs, the
    dynamic loader cache, and the interpreter's prefix when it lies outside /usr."""
    argv = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    prefix = interpreter_prefix(python)
    if not prefix.startswith("/usr/"):
        argv += ["--ro-bind", prefix, prefix]
    return argv


def interpreter_prefix(python: str) -> str:
    """The installation prefix of an interpreter: the parent of the ``bin`` directory that its
    resolved path (symlinks, e.g. a venv's, followed) lies in."""
    return str(Path(os.path.realpath(python)).parent.parent)


def _reachable_by(path: str, uid: int) -> bool:
    """Can ``uid`` (not root, in no group of ours) traverse to and read ``path``? Checks the
    "other" permission bits of every ancestor, which is what the kernel checks for that user."""
    current = Path(path)
    for part in [current, *current.parents]:
        try:
            info = part.stat()
        except OSError:
            return False
        needed = stat.S_IXOTH if part != current or part.is_dir() else stat.S_IROTH
        if info.st_uid != uid and not info.st_mode & needed:
            return False
    return True


def resolve_interpreter(config: SandboxConfig) -> str:
    """The interpreter programs run with, resolved (a venv's python becomes its base interpreter).

    Default: this Python's base interpreter when the sandbox user can reach it, else
    /usr/bin/python3. The sandbox user is ``sandbox_uid`` when the caller is root."""
    uid = config.sandbox_uid if os.geteuid() == 0 else os.geteuid()
    if config.python is not None:
        candidates = [config.python]
    else:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [os.path.join(sys.base_prefix, "bin", version), "/usr/bin/python3"]
    for candidate in candidates:
        resolved = os.path.realpath(candidate)
        if (
            os.path.isfile(resolved)
            and _reachable_by(resolved, uid)
            and _reachable_by(interpreter_prefix(resolved), uid)
        ):
            return resolved
    raise SandboxUnavailable(
        f"no interpreter for the sandbox: tried {', '.join(candidates)}; each must exist and be readable by uid {uid} "
        "along its whole path (an interpreter under /root is not). Set SandboxConfig.python to one that is, "
        "e.g. /usr/bin/python3 (`apt-get install -y python3`)"
    )


def unavailable_reason(config: SandboxConfig | None = None) -> str | None:
    """Why a sandbox with ``config`` cannot start here (the ``SandboxUnavailable`` message with its
    fix), or None when it can: for callers and tests that skip instead of failing."""
    try:
        Sandbox(config).close()
    except SandboxUnavailable as exc:
        return str(exc)
    return None


@functools.cache
def _unshare_works() -> bool:
    """Can an unprivileged process get a network namespace here (for the weaker mode)?"""
    tool = shutil.which("unshare", path="/usr/bin:/bin")
    if tool is None:
        return False
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"] if os.geteuid() == 0 else []
    try:
        argv = [*drop, tool, "--user", "--net", "--", "/bin/true"]
        done = subprocess.run(argv, capture_output=True, timeout=10, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(done.returncode == 0)


_PROBE = """
import os, socket
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
names = [name for _, name in socket.if_nameindex()]
print(__import__("json").dumps({"pids": pids, "net": names, "uid": os.getuid()}))
"""


def check_isolation(config: SandboxConfig | None = None) -> IsolationReport:
    """Probe which isolation this machine supports (behind ``grpopp sandbox check``)."""
    cfg = config or SandboxConfig()
    bwrap = shutil.which("bwrap")
    version = None
    if bwrap is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    problems: list[str] = []
    try:
        interpreter = resolve_interpreter(cfg)
        interpreter += (
            " ("
            + subprocess.run([interpreter, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
            + ")"
        )
    except (SandboxUnavailable, OSError, subprocess.SubprocessError) as exc:
        interpreter = "none"
        problems.append(str(exc))
    bwrap_works = network_isolated = pid_isolated = False
    try:
        with Sandbox(cfg.model_copy(update={"isolation": "bwrap"}), probe=False) as sandbox:
            probe = sandbox.run(_PROBE)
        if probe.ok:
            seen = json.loads(probe.stdout)
            network_isolated = seen["net"] == ["lo"]
            pid_isolated = max(seen["pids"]) <= 3
            bwrap_works = network_isolated and pid_isolated
        else:
            problems.append(f"bwrap probe failed: {probe.error or probe.stderr.strip()[-400:]}")
    except SandboxUnavailable as exc:
        problems.append(str(exc))
    rlimits_works = False
    try:
        with Sandbox(cfg.model_copy(update={"isolation": "rlimits"}), probe=False) as weak:
            rlimits_works = weak.run("print('ok')").stdout.strip() == "ok"
    except SandboxUnavailable as exc:
        problems.append(f"rlimits mode: {exc}")
    release = platform.release()
    numbers = [int(n) for n in re.findall(r"\d+", release)[:2]] + [0, 0]
    return IsolationReport(
        bwrap=f"{bwrap} ({version})" if bwrap else None,
        bwrap_works=bwrap_works,
        rlimits_works=rlimits_works,
        network_isolated=network_isolated,
        pid_isolated=pid_isolated,
        interpreter=interpreter,
        caller_is_root=os.geteuid() == 0,
        kernel=release,
        nproc_per_user_namespace=(numbers[0], numbers[1]) >= (5, 14),
        detail="ok" if bwrap_works and not problems else "; ".join(problems) or "bwrap probe showed no isolation",
    )


_SANDBOXES: dict[SandboxConfig, Sandbox] = {}
_SANDBOX_LOCK = threading.Lock()


def shared_sandbox(config: SandboxConfig) -> Sandbox:
    """One sandbox (and thread pool) per config in this process; a failure to start is not cached,
    so installing bwrap mid-run is picked up."""
    with _SANDBOX_LOCK:
        if config not in _SANDBOXES:
            _SANDBOXES[config] = Sandbox(config)
        return _SANDBOXES[config]
