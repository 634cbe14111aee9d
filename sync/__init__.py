"""tasksync: archive a Midjourney-proxy task list into SQL and keep it current."""

__version__ = "0.1.0"
