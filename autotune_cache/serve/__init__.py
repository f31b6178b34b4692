"""The serving side: point a server's Triton at a built cache and make its autotuners read it (loader), a cache
manager that never writes into a checked cache (layered), the vLLM plugin, and a stand-in server for tests and
benchmarks (stand_in)."""
