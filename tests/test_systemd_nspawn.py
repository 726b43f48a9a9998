"""vmid under a real systemd: `make install` in a booted container (tests/nspawn.py), then every
`systemctl` verb a user runs, with the fake QEMU (tests/fakeqemu.py)."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import pytest

from tests import nspawn
from tests.daemon import manifest

pytestmark = [pytest.mark.timeout(300)]

FAKE_QEMU = f"{nspawn.SOURCE}/tests/fakeqemu.py"


@functools.cache
def _unavailable() -> str | None:
    return nspawn.unavailable()


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Container]:
    """One booted container for the module, with vmid installed by `make install`."""
    if reason := _unavailable():
        pytest.skip(reason)
    wheels = nspawn.wheels()
    workdir = tmp_path_factory.mktemp("nspawn")
    name = f"vmid-test-{os.getpid()}"
    with nspawn.booted(name, workdir, (f"--bind-ro={wheels}:{nspawn.WHEELS}",)) as box:
        box.copy_in(nspawn.REPO, nspawn.SOURCE)
        box.run(
            "env",
            "PIP_NO_INDEX=1",
            f"PIP_FIND_LINKS={nspawn.WHEELS}",
            "make",
            "-C",
            nspawn.SOURCE,
            "install",
            timeout=600,
        )
        yield box


def test_make_install_puts_everything_in_place(container: nspawn.Container) -> None:
    assert container.run("vmid", "version").stdout.startswith("vmid version ")
    target = container.run("readlink", "-f", "/usr/local/bin/vmid").stdout.strip()
    assert target == "/opt/vmid/bin/vmid"
    # The unit's ExecStart= is what make install made.
    exec_start = container.show("vmid.service", "ExecStart")
    assert "path=/usr/local/bin/vmid" in exec_start, exec_start
    assert container.run("test", "-d", "/etc/vmid/instances", check=False).returncode == 0
    assert "accelerator" in container.run("cat", "/etc/vmid/vmid.yaml").stdout
    for page in ("/usr/local/share/man/man8/vmid.8", "/usr/local/share/man/man5/vmid.yaml.5"):
        assert container.run("test", "-s", page, check=False).returncode == 0, page
    assert container.run("getent", "group", "kvm", check=False).returncode == 0
    assert container.show("vmid.service", "LoadState") == "loaded"
    assert container.show("vmid.service", "UnitFileState") == "disabled"


def test_enable_now_starts_it_ready_with_its_status(container: nspawn.Container) -> None:
    container.write("/etc/vmid/vmid.yaml", f"accelerator: tcg\nqemu: {FAKE_QEMU}\n")
    container.write("/etc/vmid/instances/a.yaml", manifest("vm-a"))
    container.write("/etc/vmid/instances/b.yaml", manifest("vm-b"))
    # Type=notify: `enable --now` returns once vmid said READY=1, its VMIs Running.
    container.systemctl("enable", "--now", "vmid")
    assert container.show("vmid.service", "ActiveState") == "active"
    assert container.show("vmid.service", "StatusText") == "2 running"
    assert container.show("vmid.service", "UnitFileState") == "enabled"
