"""The composition root: config, the trio-asyncio loop, the spool watch, the supervisor, signals.

SIGTERM or SIGINT stops every VMI gracefully and in parallel, then exits (with
`onDaemonStop: keep` the VMs are left running). SIGHUP re-reads vmid.yaml and rescans the spool.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import trio
import trio_asyncio

from vmid.config import Accelerator, OnDaemonStop, Paths, load_config
from vmid.errors import ConfigError
from vmid.host import accel
from vmid.runtime import spool as spool_module
from vmid.runtime.spool import Spool
from vmid.runtime.supervisor import Supervisor

log = logging.getLogger(__name__)


async def serve(paths: Paths, config_file: Path, config_required: bool) -> None:
    """Run the daemon until SIGTERM/SIGINT; returns once every VMI is stopped (or kept)."""
    config = load_config(config_file, required=config_required)
    accelerator = accel.resolve(config.accelerator)
    log.info("vmid starting: root=%s accelerator=%s", paths.root, accelerator)
    if accelerator is Accelerator.TCG:
        log.warning("KVM is not used: guests run under TCG software emulation, much slower")
    for directory in (paths.spool, paths.state, paths.runtime, paths.logs):
        directory.mkdir(parents=True, exist_ok=True)
    spool = Spool(paths.spool, config, paths, accelerator)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio_asyncio.open_loop(), trio.open_nursery() as vms:
            supervisor = Supervisor(vms, config, paths, accelerator)
            async with trio.open_nursery() as watchers:
                await watchers.start(spool_module.watch, spool, supervisor.apply)
                log.info("vmid ready: %s", _summary(supervisor))
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        _reload(spool, supervisor, config_file, config_required)
                        supervisor.apply(await trio.to_thread.run_sync(spool.scan))
                        continue
                    log.info("vmid stopping (%s)", signal.Signals(signum).name)
                    watchers.cancel_scope.cancel()
                    break
            keep = config.onDaemonStop is OnDaemonStop.KEEP
            await supervisor.stop_all(keep=keep)
    log.info("vmid stopped")


def _reload(spool: Spool, supervisor: Supervisor, config_file: Path, required: bool) -> None:
    try:
        config = load_config(config_file, required=required)
    except ConfigError as exc:
        log.error("configuration not reloaded: %s", exc)
        return
    spool.reconfigure(config)
    supervisor.reconfigure(config)
    log.info("configuration reloaded")


def _summary(supervisor: Supervisor) -> str:
    counts = supervisor.counts()
    return ", ".join(f"{n} {p.value.lower()}" for p, n in sorted(counts.items())) or "no VMIs"
