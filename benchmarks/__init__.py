"""Benchmarks: the same workloads on steplog and on DBOS, with steplog/dbos ratios.

Run ``python -m benchmarks --help`` from the repository root; see ``benchmarks/README.md``.
Each workload point runs in a fresh subprocess: ``benchmarks.run_steplog``, ``benchmarks.run_dbos``.
"""
