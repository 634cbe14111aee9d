"""`python -m sync` is the same as the `tasksync` command."""

from sync.cli import main

main()
