"""Worker groups across several hosts.

The server's own host is node 0 of every group; each other host runs ``lmjupyter
node`` (:mod:`lmjupyter.nodes.agent`), which registers over the REST API
(:mod:`lmjupyter.nodes.api`), long-polls for commands and starts its share of a
group's torchrun. The distributed part is torchrun's own: every node's torchrun
joins a c10d rendezvous hosted by node 0 (:mod:`lmjupyter.nodes.launch`). Ranks on
other hosts reach the server over TCP (:mod:`lmjupyter.nodes.rank_listener`) after a
handshake on a per-start secret (:mod:`lmjupyter.nodes.handshake`); the registry
(:mod:`lmjupyter.nodes.registry`) notices agents that die or go quiet and fails
their groups, which restart once enough nodes are back (:mod:`lmjupyter.nodes.planner`).
"""
