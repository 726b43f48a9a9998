"""vmid's benchmarks (see bench/README.md)."""
