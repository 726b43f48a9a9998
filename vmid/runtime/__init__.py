"""The daemon's effects over time: one trio task per VMI, the supervisor, the spool watcher."""
