"""Benchmarks of the ``recognizer`` package, outside it: every figure measured next to its baseline.

``benchmarks.run`` holds the suite registry and writes ``bench.json`` + ``bench.md``
(``tools/bench.py`` is its command line); ``benchmarks.suites`` holds one module per suite;
``benchmarks.common`` the timing and memory helpers and the repository's data paths. The dated
folders (``benchmarks/2026-11-28-cpu/``) are recorded results. Suites use only the package's
public API, so the same file measures any version of it.
"""
