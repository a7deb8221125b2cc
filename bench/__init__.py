"""Benchmarks of the recorder on the real stack: throughput, ceilings, latency, memory, scaling.

Entry point `python bench/run.py [--quick]`; every figure of one run is measured side by side.
"""
