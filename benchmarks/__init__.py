"""newsmon benchmarks: `make bench` runs them all (python -m benchmarks.run)."""
