"""Benchmarks: the engine against the standard library on the same workloads.

Run them all with ``make bench`` (``python -m bench``), or one module with
``python -m bench engine_vs_tpe``. Each ``bench/*.py`` module that defines ``main(argv)`` is a
benchmark; ``_``-prefixed modules are helpers. Results are described in ``docs/benchmarks.md``.
"""
