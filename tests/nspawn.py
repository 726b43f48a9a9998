"""A Debian system booted under a real systemd (`systemd-nspawn --boot`) for the tests of
`make install` and `systemctl`.

The container boots this host's own /usr, read-only (`--volatile=yes`: a tmpfs root with an
empty /etc, populated at first boot), so it needs no download and no tree to build: it
reaches multi-user.target in about half a second. What it needs from the host is in /usr and
installed by `make packages` (systemd, systemd-container, QEMU, python3-venv...); the host's
dpkg database is bound read-only so `make install`'s package check sees them. /usr/local is
an overlay (written in the test's own directory), so `make install` can link its command
there. The container has its own network namespace (`--private-network`): nothing it does
touches the host's links. The Python packages `make install` puts in /opt/vmid come from a
wheel cache outside the checkout (`/var/cache/vmid-tests/wheels-HASH`, keyed by what it
holds), downloaded once from PyPI; inside, pip installs from it with no index.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("VMID_TEST_CACHE", "/var/cache/vmid-tests"))
#: Where the checkout's copy and the wheels are inside the container: outside /tmp and /home,
#: which vmid.service's PrivateTmp= and ProtectHome= hide, and open to QEMU's per-VM uids.
SOURCE = "/srv/vmid"
WHEELS = "/srv/wheels"
#: The environment of every command run inside: a login shell's, not the test's.
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}
#: Enable nothing at first boot (the empty /etc makes it one) but what /usr's units want
#: statically: the host's packages' services (a registry, networkd...) stay off.
PRESET = "disable *\n"
#: Not copied into the container: the test venv, git, caches, the demo's root.
EXCLUDED = (".git", ".venv", ".run", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis")
_PR_SET_PDEATHSIG = 1


def unavailable() -> str | None:
    """Why no container can boot here (a skip reason), or None."""
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is missing (Debian: apt-get install systemd-container)"
    if not Path("/usr/lib/systemd/systemd").exists():
        return "this host's /usr has no systemd to boot (Debian: apt-get install systemd)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing"
    # A container that cannot boot at all (no CAP_SYS_ADMIN, seccomp...) fails this at once.
    trial = subprocess.run(
        [*_nspawn("vmid-trial", ()), "--pipe", "/bin/true"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if trial.returncode != 0:
        return f"systemd-nspawn cannot run here: {trial.stderr.strip()[-300:]}"
    return None


def _nspawn(name: str, options: tuple[str, ...]) -> list[str]:
    """systemd-nspawn on this host's /usr. Its own mount namespace, with a tmpfs on the
    directory where nspawn keeps per-container mount propagation: nspawn refuses to clean it
    where /run is not a tmpfs (a host without systemd), and nothing of it must outlive us."""
    script = 'mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn && exec "$@"'
    return [
        *("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"),
        *("systemd-nspawn", "--directory=/", "--volatile=yes", f"--machine={name}"),
        *("--register=no", "--keep-unit", "--private-network", "--quiet"),
        *options,
    ]


class Container:
    """A booted container: run commands in it (`nsenter` into all its namespaces)."""

    def __init__(self, process: subprocess.Popen[bytes], console: Path) -> None:
        self.process = process
        self.console = console
        self.leader = 0

    def run(
        self, *argv: str, input: str | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside, as root in a login-like environment; `check`: fail loudly."""
        result = subprocess.run(
            [
                "nsenter",
                f"--target={self.leader}",
                "--all",
                "--",
                "env",
                "-i",
                *(f"{k}={v}" for k, v in ENV.items()),
                *argv,
            ],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def sh(self, script: str, timeout: float = 120, check: bool = True) -> str:
        """A shell script inside; its standard output."""
        return self.run("sh", "-ec", script, timeout=timeout, check=check).stdout

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout).stdout

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit, as `systemctl show -P` prints it."""
        return self.systemctl("show", "-P", prop, unit).strip()

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 60) -> None:
        """Poll `check()` until it is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"the container ended waiting for {what}:\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.journal()}")

    def write(self, path: str, text: str) -> None:
        """Write a file inside the way tools should: a temporary file renamed over it (a dot
        file, which vmid's spool ignores), root's, mode 0644."""
        self.run(
            "sh",
            "-ec",
            'dir=$(dirname "$1"); mkdir -p "$dir"; tmp="$dir/.$(basename "$1").tmp"; '
            'cat > "$tmp"; chmod 644 "$tmp"; mv "$tmp" "$1"',
            "sh",
            path,
            input=text,
        )

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-q", *args, check=False).stdout[-20000:]

    def log(self) -> str:
        return self.console.read_text(errors="replace")[-20000:]

    def copy_in(self, source: Path, target: str) -> None:
        """Copy the directory `source` to `target` inside (tar through nsenter)."""
        excludes = [f"--exclude=./{name}" for name in EXCLUDED]
        with subprocess.Popen(
            ["tar", "-C", str(source), *excludes, "-cf", "-", "."], stdout=subprocess.PIPE
        ) as tar:
            subprocess.run(
                [
                    "nsenter",
                    f"--target={self.leader}",
                    "--all",
                    "--",
                    "sh",
                    "-ec",
                    'mkdir -p "$1" && tar -C "$1" -xf -',
                    "sh",
                    target,
                ],
                stdin=tar.stdout,
                check=True,
                timeout=120,
            )
        assert tar.wait() == 0


@contextmanager
def booted(name: str, workdir: Path, binds: tuple[str, ...] = ()) -> Iterator[Container]:
    """Boot a container named `name` (its console log and /usr/local's overlay in `workdir`)
    and wait until it runs; power it off at the end. `binds`: more nspawn --bind options."""
    (workdir / "local").mkdir(parents=True)
    preset = workdir / "00-vmid-tests.preset"
    preset.write_text(PRESET)
    options = (
        f"--overlay=/usr/local:{workdir / 'local'}:/usr/local",
        "--bind=/dev/net/tun",
        f"--bind-ro={preset}:/etc/systemd/system-preset/00-vmid-tests.preset",
        # `make install`'s package check reads dpkg's database: the packages are this host's.
        # man's configuration: no package puts it back in an empty /etc.
        *(f"--bind-ro={p}" for p in ("/var/lib/dpkg", "/etc/manpath.config") if Path(p).exists()),
        *binds,
        "--boot",
        "--console=read-only",
    )
    console = workdir / "console.log"
    with console.open("wb") as stream:
        process = subprocess.Popen(
            # Not the kernel's command line: systemd reads its own argv in a container. No
            # first-boot questions on the console (locale, timezone, root's password).
            [*_nspawn(name, options), "systemd.firstboot=off"],
            stdin=subprocess.DEVNULL,
            stdout=stream,
            stderr=subprocess.STDOUT,
            preexec_fn=_end_with_us,
        )
    container = Container(process, console)
    try:
        container.leader = _leader(process)
        container.wait_for("the boot", lambda: _booted(container))
        yield container
    finally:
        _power_off(container)


def _end_with_us() -> None:
    """In the child: nspawn gets SIGTERM (a clean power-off) if the test process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _leader(process: subprocess.Popen[bytes]) -> int:
    """The container's PID 1 (systemd), a child of systemd-nspawn."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in _children(process.pid):
            if _comm(child) == "systemd":
                return child
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError("systemd-nspawn started no systemd")


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        text = " ".join(Path(f"/proc/{pid}/task/{t}/children").read_text() for t in tasks)
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _booted(container: Container) -> bool:
    state = container.run("systemctl", "is-system-running", check=False).stdout.strip()
    return state in ("running", "degraded")


def _power_off(container: Container) -> None:
    """SIGTERM asks nspawn for a clean shutdown; SIGKILL on the container's PID 1 ends every
    process in it if that takes too long (killing nspawn alone would leave them running)."""
    process = container.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            if container.leader:
                os.kill(container.leader, signal.SIGKILL)
            process.wait(timeout=30)


def wheels() -> Path:
    """A directory of the wheels `make install` needs (vmid's pinned dependencies and its build
    backend), downloaded from PyPI once per content of constraints.txt and pyproject.toml."""
    key = hashlib.sha256()
    for name in ("constraints.txt", "pyproject.toml"):
        key.update((REPO / name).read_bytes())
    key.update(_container_python().encode())
    directory = CACHE / f"wheels-{key.hexdigest()[:16]}"
    if (directory / ".complete").exists():
        return directory
    partial = directory.with_name(directory.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--dest",
            str(partial),
            "--only-binary=:all:",
            "--python-version",
            _container_python(),
            "-c",
            str(REPO / "constraints.txt"),
            "setuptools>=68",
            "wheel",
            *_dependencies(),
        ],
        check=True,
        timeout=600,
    )
    (partial / ".complete").touch()
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return directory


def _container_python() -> str:
    """The version of /usr/bin/python3 (what `make install`'s venv runs): MAJOR.MINOR."""
    out = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


def _dependencies() -> list[str]:
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])
