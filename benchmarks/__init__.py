"""Speed benchmarks (scripts, not tests): see benchmarks/README.md."""
