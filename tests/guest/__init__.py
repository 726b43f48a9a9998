"""The test guest: a tiny BIOS-bootable image for end-to-end tests (see README.md)."""
