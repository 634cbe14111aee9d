"""What runs: backfill, sync and sweep (`pipeline`), the daemon that schedules them
(`scheduler`) and its metrics (`metrics`).

Jobs join the server side to the archive; they decide what a run does, and leave reading
to `sync.server`, storing to `sync.archive` and showing to `sync.console`. Nothing below
imports a job.
"""
