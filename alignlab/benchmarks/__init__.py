"""Speed and memory benchmarks (`make bench`, docs/benchmarks.md): ratios measured side by side in one process."""
