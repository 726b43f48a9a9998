"""Device ids the CLI asks QEMU about, in a module of their own: `vmid console` and the like
name them without importing the planner (and the API below it)."""

#: `vmid console` asks QEMU about it by this id.
CONSOLE_CHARDEV = "charserial0"
