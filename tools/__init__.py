"""Development tools: benchmarks and the scripts that make the demo and test models."""
