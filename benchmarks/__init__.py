"""signstream.benchmarks."""
