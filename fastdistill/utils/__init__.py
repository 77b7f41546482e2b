"""Small helpers shared by the engine, tests and benchmarks."""
