"""Resolve `accelerator: auto` by asking the host whether KVM can be opened."""

from __future__ import annotations

import os

from vmid.config import Accelerator

KVM_DEVICE = "/dev/kvm"


def resolve(accelerator: Accelerator, kvm_device: str = KVM_DEVICE) -> Accelerator:
    """`auto` becomes `kvm` when `kvm_device` opens read-write, else `tcg`; others pass through."""
    if accelerator is not Accelerator.AUTO:
        return accelerator
    try:
        fd = os.open(kvm_device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return Accelerator.TCG
    os.close(fd)
    return Accelerator.KVM
