"""The server families tasksync reads: one adapter per Midjourney-proxy family, behind one
small interface (`base.Family`), looked up by name in `adapters`.

| family   | the task list                                  | module     |
| -------- | ---------------------------------------------- | ---------- |
| plus     | `POST /mj/task/query`, a Spring Page from 0     | `plus`     |
| trueai   | `POST /mj/admin/tasks`, pages from 1 (admin)    | `trueai`   |
| novicezk | `GET /mj/task/list`, the whole list at once     | `novicezk` |
| newapi   | `GET /api/mj/self` (or `/api/mj/`), dashboard   | `newapi`   |
| ids      | none: `list-by-condition` only (relays)         | `ids`      |

An adapter makes its requests through the source's `Client` (the one door to the network)
and says what its family guarantees (`base.Guarantees`), so the pipeline knows what a walk
can promise: whether drift can be repaired, how gone tasks are decided, how unfinished tasks
are re-checked. `probing.detect` (for `api = "auto"`) probes the families in a safe order,
read-only, judging by the shape of the JSON, never by the status alone.

`FAMILIES` is the one list of family names: the config's `api`, the commands' `--api` and
the simulator read it, and `adapters` has an adapter for each. This module imports nothing,
so any part may read the names without loading an adapter; the adapters never touch the
database.
"""

FAMILIES: tuple[str, ...] = ("plus", "trueai", "novicezk", "newapi", "ids")
