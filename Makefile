# vmid: `make run` and `make test` work on a fresh Debian 12 machine; they install what they need.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# QEMU and its firmware (tests run real QEMU, TCG, to prove the planned command lines start);
# dnsmasq and nft for the pod network; ip and nsenter for the network tests; skopeo pulls
# containerDisks (zstd for zstd layers); the tests push images to Debian's docker-registry,
# started by each test in a network namespace of its own: on a systemd host the service the
# package enables (a registry open to the network on :5000) is disabled again at once; fish
# checks `vmid completion fish`.
# `make install` needs only the first line (and python3-venv for its virtualenv); the tests boot
# this host's /usr under systemd-nspawn (systemd-container) to run `make install` and systemctl.
RUNTIME_PACKAGES := qemu-system-x86 qemu-utils ovmf dnsmasq-base nftables iproute2 skopeo zstd \
	python3-venv
APT_PACKAGES := $(RUNTIME_PACKAGES) util-linux docker-registry curl systemd systemd-container fish

.PHONY: setup packages lint test run clean golden install uninstall bench chaos

setup: packages $(VENV)/.installed

packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root, or: apt-get install" $$missing; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		case " $$missing " in *" docker-registry "*) \
			if [ -d /run/systemd/system ]; then systemctl disable --now -q docker-registry.service; fi;; \
		esac; \
	fi

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "vmid needs Python 3.11 or newer"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

lint: setup
	$(BIN)/ruff check vmid tests bench
	$(BIN)/ruff format --check vmid tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# A demo: the daemon in the foreground under ./.run (its own root), with conf/instances/ as they
# are, and a private network namespace (vmid0, dnsmasq and the nftables table live there, never
# on this host's own links). In it, Debian's docker-registry on 127.0.0.1:5000 serves the test
# guest as a containerDisk under the seed example's image name, and .run's registries.conf
# mirrors docker.io to it: the daemon pulls the seed's image as it would from Docker Hub.
# Ctrl+C stops every VM gracefully (and the registry).
# TCG by default: set ACCELERATOR=auto on a host whose KVM works.
ACCELERATOR ?= tcg
RUN_ROOT := .run
SEED_IMAGE := kubevirt/fedora-cloud-container-disk-demo:latest
DEMO_MIRROR := [[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n[[registry.mirror]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n

run: setup
	bash tests/guest/build.sh $(RUN_ROOT)/guest.qcow2
	mkdir -p $(RUN_ROOT)/etc/vmid/instances $(RUN_ROOT)/etc/containers
	install -m 644 conf/instances/*.yaml $(RUN_ROOT)/etc/vmid/instances/
	printf 'accelerator: %s\n' '$(ACCELERATOR)' > $(RUN_ROOT)/etc/vmid/vmid.yaml
	printf '$(DEMO_MIRROR)' > $(RUN_ROOT)/etc/containers/registries.conf
	@echo
	@echo "From another terminal:  .venv/bin/vmid get --root $(RUN_ROOT)"
	@echo "                        .venv/bin/vmid image list --root $(RUN_ROOT)"
	@echo "                        .venv/bin/vmid logs testvmi-nocloud --root $(RUN_ROOT)"
	@echo "Remove $(RUN_ROOT)/etc/vmid/instances/testvmi.yaml to power the VM off; Ctrl+C to stop."
	@echo
	unshare --net -- $(BIN)/python -m tests.registry $(RUN_ROOT) $(SEED_IMAGE) \
		$(RUN_ROOT)/guest.qcow2 -- $(BIN)/vmid daemon --root $(RUN_ROOT)

# Install for systemd (Debian 12 and the like): vmid in a virtualenv of its own, $(VMID_HOME),
# with the dependency versions of constraints.txt (Debian's pip installs `--prefix /usr/local`
# into /usr/local/local, and must not touch the system's Python), /usr/local/bin/vmid linked to
# it; the unit, the sysusers file (the kvm group), /etc/vmid/vmid.yaml (unless one exists), the
# spool, the man pages. Then: systemctl enable --now vmid. Again over an installed vmid: its
# virtualenv is updated in place; `systemctl restart vmid` runs the new one.
VMID_HOME ?= /opt/vmid
MANDIR ?= /usr/local/share/man
# Under systemd, systemd-machined (systemd-container) gives each VM a scope of its own.
install:
	$(MAKE) --no-print-directory packages \
		APT_PACKAGES="$(RUNTIME_PACKAGES) $(if $(wildcard /run/systemd/system),systemd-container)"
	test -x $(VMID_HOME)/bin/python || $(PYTHON) -m venv $(VMID_HOME)
	$(VMID_HOME)/bin/pip install -q -c constraints.txt .
	install -d -m 755 /usr/local/bin
	ln -sfn $(VMID_HOME)/bin/vmid /usr/local/bin/vmid
	install -D -m 644 systemd/vmid.service /etc/systemd/system/vmid.service
	install -D -m 644 systemd/vmid.sysusers /usr/local/lib/sysusers.d/vmid.conf
	install -d -m 755 /etc/vmid /etc/vmid/instances
	test -e /etc/vmid/vmid.yaml || install -m 644 conf/vmid.yaml /etc/vmid/vmid.yaml
	$(VMID_HOME)/bin/python docs/manpages.py $(MANDIR)  # vmid(8), vmid.yaml(5): from the code
	if [ -d /run/systemd/system ]; then systemd-sysusers && systemctl daemon-reload; fi

# Stops and disables the service (its VMs are powered off, or left running with
# `onDaemonStop: keep`), removes what `make install` put in place; keeps /etc/vmid (the
# configuration and the spool), /var/lib/vmid and /var/log/vmid.
uninstall:
	if [ -d /run/systemd/system ]; then systemctl disable --now vmid.service || true; fi
	rm -rf $(VMID_HOME)
	rm -f /usr/local/bin/vmid /etc/systemd/system/vmid.service \
		/usr/local/lib/sysusers.d/vmid.conf $(MANDIR)/man8/vmid.8 $(MANDIR)/man5/vmid.yaml.5
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Benchmarks side by side with bare QEMU (TCG): prints a table, writes bench/results.json.
# About 5 minutes; see bench/README.md. BENCH_ARGS="--runs 3 --vms 10 --idle 10" for a quick one.
# LIBVIRT=1 also installs libvirt (daemon, QEMU driver, virsh) to compare with `virsh create`;
# its libvirtd runs in throwaway mounts (bench/libvirtd-throwaway.sh), nothing of it is kept.
BENCH_ARGS ?=
LIBVIRT ?=
LIBVIRT_PACKAGES := libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
bench: setup
	@if [ -n "$(LIBVIRT)" ]; then $(MAKE) --no-print-directory packages APT_PACKAGES="$(LIBVIRT_PACKAGES)"; fi
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Rewrite tests/golden/*.args from the current planner; review the diff before committing.
golden: setup
	UPDATE_GOLDEN=1 $(BIN)/pytest -q tests/test_golden.py

# Seeded fault injection against a real daemon with a fake QEMU (tests/chaos.py): kill -9,
# SIGTERM and SIGHUP of the daemon at random instants, QEMUs killed or frozen, edits, broken
# manifests, bursts and changes while the daemon is down; invariants checked at settle points.
# `make chaos SECONDS=600 SEEDS="1 2 3"`; a run that finds something keeps its root to look at.
SECONDS ?= 600
SEEDS ?=
chaos: setup
	$(BIN)/python -m tests.chaos --seconds $(SECONDS) $(foreach s,$(SEEDS),--seed $(s))
