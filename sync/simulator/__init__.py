"""The built-in fake server for the demo, the tests and the benchmarks: a peer, not a part of
tasksync. It owns deterministic, realistic tasks and how they move (`core`), how each server
family answers (`apis`), the CDN of pictures tasks link to (`images`), and the loopback HTTP
server (`server`). It must never import tasksync's own parts (it stands for the far side of the
wire); only the family names (`sync.server.families.FAMILIES`), so both sides name the same
families. Standard library plus orjson, so it starts in milliseconds.
"""

from sync.simulator.core import Faults, Simulator
from sync.simulator.server import Reply, SimulatorServer

__all__ = ["Faults", "Reply", "Simulator", "SimulatorServer"]
