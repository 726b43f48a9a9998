"""Effects on the host: accelerator probing, storage, cloud-init ISOs and networking."""
