"""The benchmark suite behind bench/run.py (docs/benchmarks.md)."""
