"""Building a cache: what to build (spec, plan, shard, gpus), the parent that runs and watches children
(orchestrator, supervisor, ledger, view, protocol, channel), and what runs inside a child (child, precompile,
selection, device, emulation)."""
