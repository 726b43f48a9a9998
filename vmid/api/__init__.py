"""The KubeVirt API as vmid speaks it: load, default and validate VMI manifests. Pure: no I/O."""
