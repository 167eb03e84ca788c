"""Hardware-in-the-loop tools: simulators and benchmarks."""
