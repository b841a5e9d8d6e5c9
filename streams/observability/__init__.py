"""What a worker tells operators: the metrics catalogue (``metrics``) and consumer lag read from
the broker (``lag``). The HTTP endpoint and readiness run on the worker's loop, in
``streams.adapter.observability``."""
