"""Benchmarks of ``periodic`` against what a Trio user would otherwise use (issue 7).

Run ``python -m bench`` from the repository root; ``bench/README.md`` says more. Every
measured run happens in a fresh subprocess (:mod:`bench._worker`), so that memory, imports
and OpenTelemetry's global providers never carry over from one run to the next.
"""
