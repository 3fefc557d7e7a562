"""The benchmarks and studies, run as modules from the repository root:
``python -m benchmarks.<name>`` (e.g. ``python -m benchmarks.credit_study --report-only``)."""
