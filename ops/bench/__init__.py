"""Vigil's benchmark harness: ``python -m ops.bench [--small]`` prints one JSON object whose
figures are ratios, each taken in the same run beside the baseline it is judged against.

Not a timed test: numbers depend on the machine and on whatever else runs on it.
"""
