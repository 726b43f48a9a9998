"""From a defaulted VMI and the host configuration to the exact QEMU launch. Pure: no I/O."""
