"""manga-music benchmarks: pytest-benchmark suites, run with `pytest benchmarks --benchmark-only` (see README.md)."""
