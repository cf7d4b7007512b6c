"""Synthetic but realistic detector files for the demo, tests and benchmarks."""
