"""Benchmarks of svs.refine: workloads (random weights with real models' shapes), peers, the runner.

    python -m benchmarks.run --device cpu            # every workload x every peer, one table
    python -m benchmarks.run --list                  # what exists

See benchmarks/README.md.
"""
