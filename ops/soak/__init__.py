"""Soak: the rebalance and SIGKILL-and-restart fault scenarios run N times in both processing
guarantees, counting lost inputs, duplicate effects, out-of-order sequences and stalls
(``make soak``; ``python -m ops.soak --help``)."""
