"""The benchmark harness works: ``python -m ops.bench --small`` on the real broker prints one
JSON object with every figure present and positive, and per-key order and state recovery held.
Proves the harness runs, not how fast anything is (the numbers are not asserted on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.support import REPO

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FIGURES: dict[str, list[str]] = {
    "i_throughput": [
        "records",
        "subjects",
        "partitions",
        "record_bytes",
        "concurrency",
        "vigil_records_per_s",
        "raw_aiokafka_records_per_s",
        "vigil_vs_raw",
    ],
    "ii_slow_handler": [
        "records",
        "subjects",
        "handler_ms",
        "concurrency",
        "records_per_s",
        "bound_records_per_s",
        "vs_bound",
    ],
    "iii_event_age": [
        "records_per_s",
        "records",
        "vigil_output_records_per_s",
        "vigil_p50_ms",
        "vigil_p99_ms",
        "raw_aiokafka_p50_ms",
        "raw_aiokafka_p99_ms",
        "vigil_vs_raw_p50",
        "vigil_vs_raw_p99",
    ],
    "iv_recovery": [
        "changelog_records",
        "recovery_s",
        "vigil_records_per_s",
        "raw_read_records_per_s",
        "vigil_vs_raw",
    ],
    "v_memory": ["entities", "rss_start_mib", "rss_after_mib", "mib_per_100k_entities"],
    "vi_llm": [
        "calls_per_client",
        "vigil_client_cpu_ms",
        "litellm_router_cpu_ms",
        "litellm_acompletion_cpu_ms",
        "aiohttp_post_cpu_ms",
        "vigil_vs_litellm",
        "router_vs_litellm",
        "vigil_vs_router",
        "litellm_vs_aiohttp",
        "vigil_vs_aiohttp",
    ],
}


def test_bench_small_mode_prints_every_figure(kafka_bootstrap: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ops.bench", "--small", "--bootstrap", kafka_bootstrap],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, f"bench exited {result.returncode}:\n{result.stderr[-4000:]}"
    report = json.loads(result.stdout)

    assert report["mode"] == "small"
    for section, keys in FIGURES.items():
        assert section in report, f"missing {section}: {sorted(report)}"
        for key in keys:
            value = report[section].get(key)
            assert isinstance(value, int | float) and not isinstance(value, bool), (
                f"{section}.{key} = {value!r}"
            )
            assert value > 0, f"{section}.{key} = {value!r} is not positive"
    assert report["ii_slow_handler"]["order_ok"] is True
    assert report["iv_recovery"]["state_ok"] is True
    print(f"bench --small took {elapsed:.0f}s")
