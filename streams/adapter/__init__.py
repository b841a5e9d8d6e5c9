"""Every faust and mode import of Vigil lives in this package: the blast radius of a Faust
upgrade. It binds the core (``streams.core``) to a Faust app: the app and its consumer, the
worker, transactions, table recovery and the liveness watchdogs. Each private Faust member it
touches is marked ``# noqa: SLF001`` and listed in ``tests/unit/test_private_contract.py``."""
