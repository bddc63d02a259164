"""Atomic-swap settlement of OTC fills (issue 10, part 3): every fill is one hash-time-locked
swap between a Bitcoin HTLC and the Ethereum HTLC contract, driven by a durable state machine
in each node's database (:mod:`.engine`), with the roles, timeouts and their checks as pure
functions (:mod:`.plan`) and the two chains behind one interface (:mod:`.legs`)."""
