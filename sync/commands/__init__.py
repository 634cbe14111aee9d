"""The commands of `tasksync`, a module per group; `sync.cli` puts them together."""
