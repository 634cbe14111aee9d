"""The deployment kit, shipped as data only: a systemd unit (`tasksync deploy systemd` prints it),
a Dockerfile and a compose file (tasksync + PostgreSQL), Prometheus alert rules and their
promtool unit tests. Nothing here is imported by the daemon; the files are read with
`importlib.resources`, and tests/test_deploy.py checks each with the real tool (promtool,
systemd-analyze, podman). See docs/operations.md.
"""
