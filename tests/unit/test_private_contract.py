"""The private members of faust-streaming, mode, aiokafka, litellm (and prometheus-client, in the
test helpers) that Vigil relies on, checked against the installed packages.

``INVENTORY`` is the list: one row per member, with the class or module that owns it, how Vigil
uses it and why. Each row is checked against the real installed objects:

- ``OVERRIDE``: the dependency's class still defines the member, with the parameter names (and
  sync/async) Vigil's override expects; Vigil's override has the same ones; and the dependency's
  methods named in ``via`` still call it (an override nobody calls fails silently).
- ``CALL``: the inherited or foreign method Vigil calls still exists with those parameters.
- ``ATTR``: the attribute exists on a real object (built offline, no broker) with one of the
  listed types, or as a class default where no cheap object exists; ``via`` names the methods
  that must still assign it.
- ``MODULE``: a module-level object of that type.

Completeness is checked too: every private access ruff's SLF001 sees (``noqa`` or not), every
``getattr(x, "_name")``, and every private name a Vigil subclass shares with a dependency base
class must be a row here; every row must still be used somewhere in Vigil.

After upgrading faust-streaming, mode-streaming, aiokafka or litellm: read the changed source of
every row (signatures, the ``via`` call sites, what the attribute means now), fix Vigil where it
changed, then update the rows and the pins below.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import inspect
import json
import pkgutil
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve()

#: the versions this contract was written (and every row read) for
WRITTEN_FOR = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}
#: not pinned by Vigil's pyproject; the rows below were read against these
ALSO_READ_AGAINST = {"mode-streaming": "0.7.1", "litellm": "1.110.2", "prometheus-client": "0.26.0"}

OVERRIDE, CALL, ATTR, MODULE = "override", "call", "attr", "module"

# owners: "module:Class" (the class Vigil subclasses or uses; the member may come from a base)
CONSUMER = "faust.transport.drivers.aiokafka:Consumer"
THREAD = "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread"
PRODUCER = "faust.transport.drivers.aiokafka:Producer"
APP = "faust:App"
WORKER = "faust:Worker"
TXNS = "faust.transport.consumer:TransactionManager"
RECOVERY = "faust.tables.recovery:Recovery"
STORE = "faust.stores.rocksdb:Store"
KAFKA_CONSUMER = "aiokafka:AIOKafkaConsumer"
KAFKA_CLIENT = "aiokafka.client:AIOKafkaClient"
RESPONSE = "litellm:ModelResponse"
REGISTRY = "prometheus_client:CollectorRegistry"
COUNTER = "prometheus_client:Counter"
# methods named in ``via``
FC = "faust.transport.consumer:Consumer"
FTC = "faust.transport.consumer:ThreadDelegateConsumer"
FAPP = "faust.app.base:App"
FREC = "faust.tables.recovery:Recovery"
MW = "mode.worker:Worker"


class Private(NamedTuple):
    member: str
    owner: str
    kind: str
    #: OVERRIDE/CALL: "(params)" or "async (params)", without self; ATTR/MODULE: type names, "|"
    shape: str
    #: OVERRIDE: the Vigil class that overrides it
    vigil: str
    why: str
    #: OVERRIDE: dependency methods that must still call it; ATTR: methods that must assign it
    via: tuple[str, ...] = ()


# fmt: off
INVENTORY: tuple[Private, ...] = (
    # -- faust Consumer: Vigil owns the committed offsets (streams.adapter.consumer) ----------------------------------
    Private("_new_consumer_thread", CONSUMER, OVERRIDE, "()", "VigilConsumer", "builds VigilConsumerThread (commit errors, exactly-once highwaters)", (f"{FTC}.__init__",)),
    Private("_filter_tps_with_pending_acks", CONSUMER, OVERRIDE, "(topics)", "VigilConsumer", "the partitions to commit come from Vigil's offset trackers, not Faust's acks", (f"{FC}.force_commit",)),
    Private("_new_offset", CONSUMER, OVERRIDE, "(tp)", "VigilConsumer", "committable offset = lowest unfinished record, never past a slow head (faust #606)", (f"{FC}._filter_committable_offsets",)),
    Private("_filter_committable_offsets", CONSUMER, OVERRIDE, "(tps)", "VigilConsumer", "exactly-once: a dirty transaction commits even when its offset did not move", (f"{FC}._commit_tps",)),
    Private("_commit_offsets", CONSUMER, OVERRIDE, "async (offsets, start_new_transaction)", "VigilConsumer", "a failed commit keeps the old committed offset, so the next tick retries it (faust #316)", (f"{FC}._commit_tps",)),
    Private("_getmany", CONSUMER, OVERRIDE, "async (active_partitions, timeout)", "VigilConsumer", "topics held by backpressure are left out of the fetch", (f"{FC}._wait_next_records",)),
    Private("perform_seek", CONSUMER, OVERRIDE, "async ()", "VigilConsumer", "(public) stream partitions stop fetching from the post-rebalance seek until the queue clear", (f"{FREC}.on_recovery_completed", f"{FREC}._resume_streams")),
    Private("resume_flow", CONSUMER, OVERRIDE, "()", "VigilConsumer", "(public) called right after Faust clears the stream queues: the stream partitions fetch again", (f"{FREC}.on_recovery_completed", f"{FREC}._resume_streams")),
    Private("pause_partitions", CONSUMER, OVERRIDE, "(tps)", "VigilConsumer", "(public) a partition paused before the clear stays off", (f"{FAPP}._on_partitions_revoked", f"{FAPP}._on_partitions_assigned")),
    Private("on_partitions_revoked", CONSUMER, OVERRIDE, "async (revoked)", "VigilConsumer", "(public) offset trackers forget revoked partitions", (f"{FTC}.threadsafe_partitions_revoked",)),
    Private("_get_active_partitions", CONSUMER, CALL, "()", "", "the fetch set: perform_seek/resume_flow move stream partitions out of and back into it; _getmany, fetch_state and the recovery watchdog read it"),
    Private("_is_changelog_tp", CONSUMER, CALL, "(tp)", "", "perform_seek tells stream partitions from changelog partitions"),
    Private("_acked", CONSUMER, ATTR, "defaultdict", "", "_new_offset empties Faust's ack lists for Vigil's topics (they would only grow)", (f"{FC}.__init__",)),
    Private("_acked_index", CONSUMER, ATTR, "defaultdict", "", "as _acked", (f"{FC}.__init__",)),
    Private("_committed_offset", CONSUMER, ATTR, "defaultdict", "", "restored after a failed commit; exactly-once fallback offset of a dirty partition; the liveness guard's committed offset", (f"{FC}.__init__",)),
    Private("_paused_partitions", CONSUMER, ATTR, "set", "", "resume_flow keeps partitions paused since the seek off the fetch set; fetch_state (liveness guard) reports it", (f"{FC}._reset_state",)),
    Private("_buffered_partitions", CONSUMER, ATTR, "set", "", "_getmany: a partition Faust buffers is not rewound (its records are delivered, not discarded)", (f"{FC}.__init__", f"{FC}._reset_state")),
    Private("_read_offset", CONSUMER, ATTR, "defaultdict", "", "recovery watchdog diagnostics (read offset of a stalled changelog partition)", (f"{FC}.__init__",)),
    Private("_thread", CONSUMER, ATTR, "AIOKafkaConsumerThread", "", "tests close the loop of a consumer thread that never started", (f"{FTC}.__init__",)),
    # -- faust's aiokafka consumer thread -------------------------------------------------------------------
    Private("_commit", THREAD, OVERRIDE, "async (offsets)", "VigilConsumerThread", "retriable commit errors skip one tick instead of crashing the worker", (f"{THREAD}.commit",)),
    Private("_highwaters", THREAD, OVERRIDE, "async (partitions)", "VigilConsumerThread", "exactly-once: a changelog highwater is its last committed record + 1", (f"{THREAD}.highwaters",)),
    Private("_ensure_consumer", THREAD, CALL, "()", "", "the aiokafka consumer behind the thread (commit, end_offsets)"),
    Private("_create_worker_consumer", THREAD, OVERRIDE, "(transport)", "VigilConsumerThread", "the worker's aiokafka consumer joins its agent's own group, not the app id's", (f"{THREAD}._create_consumer",)),
    # -- faust App and Worker -------------------------------------------------------------------------------
    Private("_new_consumer", APP, OVERRIDE, "()", "VigilApp", "builds VigilConsumer (same arguments as Faust's, see the mirror test)", (f"{FAPP}.consumer",)),
    Private("_consumer_wait_empty", APP, OVERRIDE, "async (consumer, logger)", "VigilApp", "bounded drain of the schedulers on revoke and stop, then commit", (f"{FAPP}._on_partitions_revoked", f"{FAPP}._stop_consumer")),
    Private("_stop_consumer", APP, OVERRIDE, "async ()", "VigilApp", "exactly-once: writes the clean-stop marker after the final commit", (f"{FAPP}.on_stop",)),
    Private("_on_partitions_revoked", APP, CALL, "async (revoked)", "", "handed to VigilConsumer, as Faust's _new_consumer does"),
    Private("_on_partitions_assigned", APP, CALL, "async (assigned, generation_id)", "", "handed to VigilConsumer, as Faust's _new_consumer does"),
    Private("_consumer", APP, ATTR, "Consumer", "", "the consumer if built: read by the paused-partition metrics and the clean-stop check without building one", (f"{FAPP}.consumer",)),
    Private("_schedule_shutdown", WORKER, OVERRIDE, "(signal)", "VigilWorker", "a second SIGTERM/SIGINT exits at once", (f"{MW}._on_sigterm", f"{MW}._on_sigint")),
    Private("_signal_stop_time", WORKER, ATTR, "NoneType", "", "class default None, set by the first signal: tells the second one apart", (f"{MW}._schedule_shutdown",)),
    # -- faust TransactionManager: Vigil's per-partition transactions (streams.adapter.transactions) ------------------
    Private("__init__", TXNS, OVERRIDE, "(transport, consumer, producer, **kwargs)", "VigilTransactions", "VigilConsumer builds VigilTransactions as Faust's Consumer.__init__ builds its manager"),
    Private("commit", TXNS, OVERRIDE, "async (offsets, start_new_transaction)", "VigilTransactions", "(public) commits whole records per input partition, never swallows errors", (f"{FC}._commit_offsets",)),
    Private("on_rebalance", TXNS, OVERRIDE, "async (assigned, revoked, newly_assigned)", "VigilTransactions", "(public) opens/closes one transactional producer per input partition", (f"{FAPP}._on_partitions_assigned",)),
    Private("on_partitions_revoked", TXNS, OVERRIDE, "async (revoked)", "VigilTransactions", "(public) nothing to flush: the app drained and committed before", (f"{FAPP}._on_partitions_revoked",)),
    Private("send", TXNS, OVERRIDE, "async (topic, key, value, partition, timestamp, headers, transactional_id)", "VigilTransactions", "(public) refuses writes that bypass TransactionalEffects"),
    Private("_settings_default", PRODUCER, CALL, "()", "", "the app's producer settings, reused by each transactional producer"),
    Private("_settings_auth", PRODUCER, CALL, "()", "", "the app's producer credentials, reused by each transactional producer"),
    Private("_ensure_producer", PRODUCER, CALL, "()", "", "the aiokafka producer under the app's: outputs and changelog records skip Faust's per-record wrapper"),
    # -- faust table manager: start without Faust's one-second sleep (streams.adapter.app) -----------------------------
    Private("_update_channels", "faust.tables.manager:TableManager", CALL, "async ()", "", "what TableManager.on_start does after its 1 s sleep, which VigilTableManager skips"),
    Private("on_start", "faust.tables.manager:TableManager", OVERRIDE, "async ()", "VigilTableManager", "(public) Faust's start minus the sleep: every table is declared before the worker starts"),
    # -- faust table store: reads and batched writes by partition (streams.adapter.tables) --------------------------
    Private("_db_for_partition", STORE, CALL, "(partition)", "", "the RocksDB store of one partition: one get per read, one WriteBatch per write (also the bulk restore's batches)"),
    Private("_dbs", STORE, ATTR, "dict", "", "the partitions whose store is open: a late changelog ack must not reopen a revoked one", (f"{STORE}.__init__",)),
    # -- faust table recovery (streams.adapter.recovery watchdog, streams.adapter.observability readiness) ------------------
    Private("_recovery_started_at", RECOVERY, ATTR, "NoneType|float", "", "watchdog: start of the current recovery", (f"{FREC}._set_recovery_started",)),
    Private("_active_events_received_at", RECOVERY, ATTR, "dict", "", "watchdog: when each active changelog partition last got a record", (f"{FREC}.__init__",)),
    Private("active_offsets", RECOVERY, ATTR, "Counter", "", "(public, not in RecoveryT) watchdog: last applied offset per changelog partition", (f"{FREC}.__init__",)),
    Private("active_highwaters", RECOVERY, ATTR, "Counter", "", "(public, not in RecoveryT) watchdog: where recovery of each partition ends", (f"{FREC}.__init__",)),
    Private("completed", RECOVERY, ATTR, "Event", "", "(public, not in RecoveryT) readiness: set once the first assignment is recovered", (f"{FREC}.__init__",)),
    # -- faust table recovery: the bulk restore (streams.adapter.restore) -------------------------------------------------
    Private("_build_offsets", RECOVERY, OVERRIDE, "async (consumer, tps, destination, title)", "VigilRecovery", "after Faust's start offsets, the bulk restore reads each active changelog partition to its highwater", (f"{FREC}._restart_recovery",)),
    Private("_recovery", "faust.tables.manager:TableManager", ATTR, "NoneType", "", "class default None until first use: install puts VigilRecovery there, the recovery property builds one only when unset", ("faust.tables.manager:TableManager.recovery",)),
    # -- aiokafka -------------------------------------------------------------------------------------------
    Private("_group_id", KAFKA_CONSUMER, ATTR, "str|NoneType", "", "set after construction: the agent's own consumer group (read by start to build the coordinator)", (f"{KAFKA_CONSUMER}.__init__",)),
    Private("_client", KAFKA_CONSUMER, ATTR, "AIOKafkaClient", "", "force_metadata_update when the first metadata predates a topic (streams.kafka, DLQ tooling, ops/bench)"),
    Private("force_metadata_update", KAFKA_CLIENT, CALL, "()", "", "(public, reached through _client) returns the future Vigil awaits"),
    # -- litellm --------------------------------------------------------------------------------------------
    Private("_hidden_params", RESPONSE, ATTR, "dict", "", "model name and response_cost of each call (agents.llm accounting; keys checked by a real Router call)"),
    # -- prometheus-client (tests/promql.py) ----------------------------------------------------------------
    Private("_names_to_collectors", REGISTRY, ATTR, "dict", "", "tests: the collectors behind the families (label names of families without samples)"),
    Private("_labelnames", COUNTER, ATTR, "tuple", "", "tests: label names of a collector"),
)
# fmt: on

MEMBERS = {row.member for row in INVENTORY}
DEPENDENCIES = ("faust", "mode", "aiokafka", "litellm", "prometheus_client")


def row_id(row: Private) -> str:
    owner = row.owner.rpartition(":")[2] or row.owner
    return f"{owner}.{row.member}"


def upgrade_hint(row: Private) -> str:
    return (
        f"\nVigil needs {row_id(row)} ({row.kind}, owner {row.owner}): {row.why}."
        f"\nRe-check this member in the installed source and update INVENTORY in {THIS.relative_to(ROOT)}."
    )


# -- resolving the installed objects ----------------------------------------------------------------------
def resolve(path: str) -> Any:
    """``module:Class`` or ``module:Class.attr`` or ``module``."""
    module, _, qual = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in filter(None, qual.split(".")):
        obj = inspect.getattr_static(obj, part)
    return obj


def function_of(obj: Any) -> Callable[..., Any]:
    if isinstance(obj, property):
        assert obj.fget is not None
        obj = obj.fget
    obj = getattr(obj, "__func__", obj)  # staticmethod/classmethod
    obj = getattr(obj, "fun", obj)  # mode's @Service.task (a ServiceTask holding the method)
    return inspect.unwrap(obj)  # type: ignore[no-any-return]


def shape_of(obj: Any) -> str:
    fn = function_of(obj)
    names = []
    for p in inspect.signature(fn).parameters.values():
        if p.name == "self":
            continue
        stars = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        names.append(stars + p.name)
    return ("async " if inspect.iscoroutinefunction(fn) else "") + f"({', '.join(names)})"


def body_of(path: str) -> str:
    """The source of a dependency's method, without its ``def`` line."""
    source = textwrap.dedent(inspect.getsource(function_of(resolve(path))))
    tree = ast.parse(source)
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
    return "\n".join(ast.get_source_segment(source, stmt) or "" for stmt in fn.body)


def defining_class(cls: type, member: str) -> type | None:
    return next((c for c in cls.__mro__ if member in vars(c)), None)


@functools.cache
def vigil_classes() -> tuple[type, ...]:
    """Every class defined in Vigil's packages (found by walking them, so rows name classes, not
    modules, and survive moves between modules)."""
    found: list[type] = []
    for package in ("schemas", "streams", "agents"):
        pkg = importlib.import_module(package)
        names = [package] + [m.name for m in pkgutil.walk_packages(pkg.__path__, f"{package}.")]
        for name in names:
            module = importlib.import_module(name)
            found.extend(o for o in vars(module).values() if inspect.isclass(o) and o.__module__ == name)
    return tuple(found)


def vigil_class(name: str, base: type = object) -> type | None:
    return next((c for c in vigil_classes() if c.__name__ == name and issubclass(c, base)), None)


def vigil_sources() -> Iterator[Path]:
    for top in ("schemas", "streams", "agents", "ops", "tests"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.resolve() != THIS and ".venv" not in path.parts:
                yield path


def vigil_text() -> str:
    return "\n".join(p.read_text() for p in vigil_sources())


# -- real objects, built offline --------------------------------------------------------------------------
@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Real instances of the owners, built without a broker (nothing is started)."""
    import aiokafka
    import litellm
    import prometheus_client

    from streams.adapter.app import create_app
    from streams.core.settings import Settings

    app: Any = create_app(Settings(data_dir=tmp_path, _env_file=None))
    consumer = app.consumer
    table = app.Table("contract", partitions=4, key_type=str, options={"driver": "rocksdict"})
    kafka_consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", enable_auto_commit=False)
    objects = {
        CONSUMER: consumer,
        THREAD: consumer._thread,
        APP: app,
        PRODUCER: app.producer,
        RECOVERY: app.tables.recovery,
        STORE: table.data,
        KAFKA_CONSUMER: kafka_consumer,
        RESPONSE: litellm.ModelResponse(),
        REGISTRY: prometheus_client.CollectorRegistry(),
        COUNTER: prometheus_client.Counter("contract_things", "doc", ["a"], registry=None),
        "vigil_app": app,
    }
    try:
        yield objects
    finally:
        await kafka_consumer.stop()
        consumer._thread.thread_loop.close()  # never started: nothing else closes its loop


# -- the inventory, row by row ----------------------------------------------------------------------------
def test_pinned_versions() -> None:
    for package, written_for in WRITTEN_FOR.items():
        installed = importlib.metadata.version(package)
        assert installed == written_for, (
            f"{package} {installed} is installed; the private-member contract in {THIS.relative_to(ROOT)} "
            f"was written for {written_for}. An upgrade must re-check every INVENTORY row against the new "
            "source (signatures, the 'via' call sites, what each attribute means), fix Vigil where it "
            "changed, then update WRITTEN_FOR here and the pin in pyproject.toml."
        )


@pytest.mark.parametrize("row", [r for r in INVENTORY if r.kind in (OVERRIDE, CALL)], ids=row_id)
def test_method(row: Private) -> None:
    owner = resolve(row.owner)
    base = defining_class(owner, row.member)
    assert base is not None, f"{row_id(row)} no longer exists." + upgrade_hint(row)
    assert shape_of(vars(base)[row.member]) == row.shape, (
        f"{row_id(row)} (defined in {base.__module__}.{base.__qualname__}) is now "
        f"{shape_of(vars(base)[row.member])}, Vigil expects {row.shape}." + upgrade_hint(row)
    )
    if row.kind == OVERRIDE:
        vigil = vigil_class(row.vigil, owner)
        assert vigil is not None, f"no Vigil class {row.vigil} subclassing {row.owner}" + upgrade_hint(row)
        assert row.member in vars(vigil), (
            f"{row.vigil} no longer overrides {row.member}: drop the row or restore the override"
        )
        ours = shape_of(vars(vigil)[row.member])
        if ours.endswith("(*args, **kwargs)"):  # passes everything through; compare sync/async only
            assert ours.startswith("async") == row.shape.startswith("async"), (
                f"{row.vigil}.{row.member} is {ours}, the base is {row.shape}" + upgrade_hint(row)
            )
        else:
            assert ours == row.shape, (
                f"{row.vigil}.{row.member} is {ours}, the base is {row.shape}" + upgrade_hint(row)
            )
    for caller in row.via:
        assert re.search(rf"\.{re.escape(row.member)}\b", body_of(caller)), (
            f"{caller} no longer calls {row.member}: Vigil's override would never run." + upgrade_hint(row)
        )


@pytest.mark.parametrize("row", [r for r in INVENTORY if r.kind in (ATTR, MODULE)], ids=row_id)
def test_attribute(row: Private, live: dict[str, Any]) -> None:
    allowed = set(row.shape.split("|"))
    if row.kind == MODULE:
        holder: Any = importlib.import_module(row.owner)
    else:
        holder = live.get(row.owner)
        if holder is None:  # no cheap instance: the class default
            holder = resolve(row.owner)
    marker = object()
    value = inspect.getattr_static(holder, row.member, marker)
    if value is marker:
        value = getattr(holder, row.member, marker)
    assert value is not marker, f"{row_id(row)} no longer exists on a real {row.owner}." + upgrade_hint(row)
    types = {c.__name__ for c in type(value).__mro__}
    assert allowed & types, (
        f"{row_id(row)} is a {type(value).__name__}, Vigil expects {row.shape}." + upgrade_hint(row)
    )
    for method in row.via:
        assert re.search(rf"self\.{re.escape(row.member)}\s*(:[^=\n]*)?=[^=]", body_of(method)), (
            f"{method} no longer assigns {row.member}." + upgrade_hint(row)
        )


# -- behaviour Vigil builds on, checked on real objects ---------------------------------------------------
async def test_partition_writes_land_in_that_partition_and_read_back_through_faust(
    live: dict[str, Any],
) -> None:
    """streams.adapter.tables writes a partition's store in one WriteBatch and reads it by partition;
    Faust must see the same bytes under the same key (recovery, persisted offsets)."""
    from faust.types import TP

    from streams.adapter.tables import FaustTable
    from streams.core.tables import str_key

    store = live[STORE]
    table = FaustTable(store.table, lambda: None)
    key = str_key("s1")
    table.apply_local(2, [(key, b'{"v":2}'), (b"\x00id\x00e1", b"\x01" * 8)])
    assert 2 in store._dbs, "_db_for_partition did not open the partition's store"
    assert table.get(2, key) == b'{"v":2}' and table.get(1, key) is None, "the write left its partition"
    assert store._db_for_partition(2).get(key) == b'{"v":2}'
    assert store._encode_key("s1") == key, "Faust no longer encodes str keys as JSON strings"
    assert next(iter(table.entries_from(2, b"\x00id\x00"))) == (b"\x00id\x00e1", b"\x01" * 8), (
        "not in key order"
    )
    assert 2 in table.open_partitions()
    table.apply_local(2, [(key, None)])
    assert table.get(2, key) is None, "a None value must delete"
    store.set_persisted_offset(TP(table.changelog_topic, 2), 41)
    assert store.persisted_offset(TP(table.changelog_topic, 2)) == 41


# litellm's Router builds a pydantic schema of a TypedDict with ReadOnly items on first use; pydantic
# warns about it when litellm was imported by an earlier test (the live fixture). Third-party noise.
@pytest.mark.filterwarnings("ignore:Items? .* using the `ReadOnly` qualifier:UserWarning")
async def test_litellm_router_response_carries_model_and_cost(server: tuple[Any, str]) -> None:
    """agents.llm reads ``response._hidden_params["litellm_model_name"]`` and ``["response_cost"]``."""
    from litellm.router import Router

    from agents.llm import router_config
    from streams.core.settings import Settings

    _, base = server
    settings = Settings(llm_model="openai/contract", llm_api_base=base, llm_num_retries=0, _env_file=None)
    router = Router(**router_config(settings, "default"))
    response = await router.acompletion(model="default", messages=[{"role": "user", "content": "hi"}])
    hidden = response._hidden_params
    row = next(r for r in INVENTORY if r.member == "_hidden_params")
    assert isinstance(hidden, dict), upgrade_hint(row)
    assert hidden.get("litellm_model_name") == "openai/contract", (
        f"litellm_model_name: {hidden!r}" + upgrade_hint(row)
    )
    assert isinstance(hidden.get("response_cost"), float), f"response_cost: {hidden!r}" + upgrade_hint(row)


def test_producer_settings_fit_a_plain_aiokafka_producer(live: dict[str, Any]) -> None:
    """streams.adapter.transactions builds ``AIOKafkaProducer(**_settings_default(), **_settings_auth(), ...)``."""
    import aiokafka

    producer = live[PRODUCER]
    settings = {**producer._settings_default(), **producer._settings_auth()}
    accepted = set(inspect.signature(aiokafka.AIOKafkaProducer.__init__).parameters)
    assert settings and set(settings) <= accepted, (
        f"not AIOKafkaProducer arguments: {set(settings) - accepted}"
    )


def call_keywords(source: str, callee: str) -> set[str]:
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == callee:
                return {k.arg for k in node.keywords if k.arg is not None}
    raise AssertionError(f"no call of {callee} in\n{source}")


@pytest.mark.parametrize(
    ("faust_method", "faust_callee", "vigil_method", "vigil_callee"),
    [
        (f"{FAPP}._new_consumer", "create_consumer", "VigilApp._new_consumer", "VigilConsumer"),
        (
            f"{CONSUMER}._new_consumer_thread",
            "AIOKafkaConsumerThread",
            "VigilConsumer._new_consumer_thread",
            "VigilConsumerThread",
        ),
        (f"{FC}.__init__", "create_transaction_manager", "VigilConsumer.__init__", "VigilTransactions"),
    ],
    ids=["App._new_consumer", "Consumer._new_consumer_thread", "Consumer.transactions"],
)
def test_vigil_builds_what_faust_builds_with_the_same_arguments(
    faust_method: str, faust_callee: str, vigil_method: str, vigil_callee: str
) -> None:
    """Vigil replaces some of Faust's factories with its own class; an argument Faust starts to
    pass there must be passed by Vigil too."""
    theirs = call_keywords(inspect.getsource(function_of(resolve(faust_method))), faust_callee)
    cls_name, _, method = vigil_method.partition(".")
    vigil = vigil_class(cls_name)
    assert vigil is not None, f"no Vigil class {cls_name}"
    ours = call_keywords(inspect.getsource(vars(vigil)[method]), vigil_callee)
    assert theirs <= ours, f"{faust_method} passes {sorted(theirs - ours)} that {vigil_method} does not"


@pytest.mark.parametrize("method", [f"{FREC}.on_recovery_completed", f"{FREC}._resume_streams"])
def test_faust_seeks_then_clears_then_resumes_the_flow(method: str) -> None:
    """VigilConsumer keeps stream partitions off the fetch set from ``perform_seek`` until
    ``resume_flow``; that holds only while Faust clears the stream queues in between."""
    body = body_of(method)
    steps = ["perform_seek()", "flow_control.resume()", "resume_flow()"]
    at = [body.find(step) for step in steps]
    assert -1 not in at and at == sorted(at), (
        f"{method} no longer runs {' -> '.join(steps)}: re-read VigilConsumer.perform_seek"
    )


# -- completeness: nothing private is used that is not in the inventory ----------------------------------
#: Vigil's own private names used across its modules: not a dependency's, so not in INVENTORY
VIGIL_OWN = {
    "_started": "streams.kafka._started, the client lifecycle the DLQ tooling shares",
    "_export": "LagMonitor._export, driven by its unit test",
}


def test_every_private_access_is_in_the_inventory() -> None:
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "SLF001", "--ignore-noqa", "--no-cache",
         "--exit-zero", "--output-format", "json", "schemas", "streams", "agents", "ops", "tests"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    accesses = [
        (
            str(Path(d["filename"]).relative_to(ROOT)),
            d["location"]["row"],
            re.findall(r"`(\w+)`", d["message"])[0],
        )
        for d in json.loads(ruff.stdout)
        if Path(d["filename"]).resolve() != THIS  # the checks above touch every member on purpose
    ]
    for path in vigil_sources():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for name in re.findall(r"getattr\(\s*[^,()]+,\s*[\"'](_[A-Za-z]\w*)[\"']", line):
                accesses.append((str(path.relative_to(ROOT)), lineno, name))
    assert accesses, "the scan found nothing: is it still looking at the right folders?"
    unknown = [f"{p}:{n} {name}" for p, n, name in accesses if name not in MEMBERS and name not in VIGIL_OWN]
    assert not unknown, (
        "private members not in INVENTORY: add a row saying why Vigil needs it (or, if the member is "
        "Vigil's own, add it to VIGIL_OWN):\n" + "\n".join(unknown)
    )


def test_vigil_subclasses_declare_the_private_members_they_share_with_a_dependency() -> None:
    undeclared = []
    for cls in vigil_classes():
        bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in DEPENDENCIES]
        if not bases:
            continue
        ours = inspect.getsource(cls)
        # names Vigil's class itself writes (not those the dependency's metaclass adds, e.g. _tasks)
        names = {
            n
            for n in vars(cls)
            if n.startswith("_") and not n.startswith("__") and re.search(rf"\b{n}\b", ours)
        }
        names |= set(re.findall(r"self\.(_[A-Za-z]\w*)", ours))
        for name in sorted(names - MEMBERS):
            for base in bases:
                try:
                    source = inspect.getsource(base)
                except (OSError, TypeError):
                    source = ""
                if (
                    name in vars(base)
                    or name in vars(base).get("__annotations__", {})
                    or re.search(rf"self\.{name}\b", source)
                ):
                    undeclared.append(
                        f"{cls.__name__}.{name} (also in {base.__module__}.{base.__qualname__})"
                    )
                    break
    assert not undeclared, (
        "a Vigil subclass overrides or uses a dependency's private member that INVENTORY does not list "
        "(add a row, or rename ours if the clash is an accident):\n" + "\n".join(undeclared)
    )


def test_every_row_is_still_used() -> None:
    text = vigil_text()
    unused = [row_id(r) for r in INVENTORY if not re.search(rf"\b{re.escape(r.member)}\b", text)]
    assert not unused, f"INVENTORY rows no longer used by Vigil (drop them): {unused}"
