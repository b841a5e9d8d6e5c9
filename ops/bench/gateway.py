"""Webhook gateway throughput: signed GitHub ``pull_request`` webhooks per second through
``vigil``'s gateway (HMAC check, envelope, acks=all, 202 after the ack) vs a bare aiohttp
handler that checks the same HMAC and answers 202 without Kafka. Same run, same client (aiohttp,
fixed concurrency), each server in its own process so it does not share the client's core.

    python -m ops.bench.gateway [--seconds 5] [--concurrency 64]     # prints one JSON object

``measure(bootstrap, seconds)`` is what ``ops/bench/run.py`` calls."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from streams.core.settings import Settings
from streams.kafka import client as kafka

SECRET = "bench-webhook-secret"
CONCURRENCY = 64
WARMUP = 1.0
ROUNDS = 5
REPO = Path(__file__).resolve().parents[2]


def payload() -> bytes:
    """A pull_request ``opened`` body of typical size (~4 KB; real ones run 4-30 KB)."""
    repo = {
        "id": 1296269,
        "name": "Hello-World",
        "full_name": "octocat/Hello-World",
        "private": False,
        "owner": {"login": "octocat", "id": 1, "type": "User", "site_admin": False},
        "html_url": "https://github.com/octocat/Hello-World",
        "description": "This your first repo!",
        "default_branch": "main",
        "topics": ["octocat", "api"],
        "visibility": "public",
    }
    pr = {
        "url": "https://api.github.com/repos/octocat/Hello-World/pulls/1347",
        "number": 1347,
        "state": "open",
        "title": "Amazing new feature",
        "user": {"login": "hubot", "id": 2, "type": "User"},
        "body": "Please pull these awesome changes in! " * 40,
        "head": {"ref": "new-topic", "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e", "repo": repo},
        "base": {"ref": "main", "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e", "repo": repo},
        "draft": False,
        "commits": 3,
        "additions": 100,
        "deletions": 3,
        "changed_files": 5,
    }
    body = {"action": "opened", "number": 1347, "pull_request": pr, "repository": repo, "sender": pr["user"]}
    return json.dumps(body).encode()


# -- the servers (child processes) -------------------------------------------------------------
def bare_app() -> web.Application:
    from streams.sources.gateway.signatures import SignatureError, verify_github

    secrets = [SECRET.encode()]

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify_github(secrets, body, request.headers.get("X-Hub-Signature-256"))
        except SignatureError as exc:
            return web.json_response({"error": str(exc)}, status=401)
        return web.json_response({"id": request.headers.get("X-GitHub-Delivery")}, status=202)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/webhooks/github", hook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    return app


async def _serve(kind: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if kind == "bare":
        runner = web.AppRunner(bare_app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    else:
        from streams.sources.gateway import Gateway, GatewaySettings, serve

        runner = await serve(Gateway(Settings(), GatewaySettings()), "127.0.0.1", port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _start(kind: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ops.bench.gateway", "serve", kind, "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def _wait_ready(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"bench server exited: {err[-2000:]}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{url}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{url}/readyz never answered 200")


# -- the client ---------------------------------------------------------------------------------
async def load(url: str, seconds: float, concurrency: int) -> dict[str, Any]:
    """``concurrency`` clients posting signed webhooks (each a fresh delivery id) for
    ``seconds``; answers to requests that finish after the window are not counted."""
    from streams.sources.gateway.signatures import github_signature

    body = payload()
    signature = github_signature(SECRET.encode(), body)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + seconds

        async def client() -> None:
            nonlocal errors
            while (now := loop.time()) < end:
                headers = {
                    "X-GitHub-Event": "pull_request",
                    "X-GitHub-Delivery": str(uuid.uuid4()),
                    "X-Hub-Signature-256": signature,
                    "Content-Type": "application/json",
                }
                async with session.post(f"{url}/webhooks/github", data=body, headers=headers) as response:
                    await response.read()
                    done = loop.time()
                    if done > end:
                        continue
                    if response.status == 202:
                        latencies.append(done - now)
                    else:
                        errors += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"latencies": latencies, "errors": errors}


def _merge(parts: list[dict[str, Any]], seconds: float) -> dict[str, float]:
    latencies = sorted(x for p in parts for x in p["latencies"])

    def pct(q: float) -> float:
        return (
            round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2) if latencies else 0.0
        )

    return {
        "requests_per_s": round(len(latencies) / seconds, 1),
        # the server process's own CPU per answered request: steadier than rates on a busy machine
        "cpu_ms_per_request": round(sum(p["cpu_s"] for p in parts) * 1000 / max(1, len(latencies)), 3),
        "errors": sum(p["errors"] for p in parts),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


async def measure(bootstrap: str, seconds: float = 5.0, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    prefix = f"bench-gw-{uuid.uuid4().hex[:8]}."
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix)
    topic = settings.topic("github.pull_request.v1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_KAFKA_BOOTSTRAP=bootstrap,
        VIGIL_TOPIC_PREFIX=prefix,
        VIGIL_GITHUB_WEBHOOK_SECRET=SECRET,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    try:
        for kind in ("bare", "gateway"):
            port = _free_port()
            urls[kind] = f"http://127.0.0.1:{port}"
            procs[kind] = _start(kind, port, env)
        async with aiohttp.ClientSession() as probe:
            for kind, proc in procs.items():
                await _wait_ready(probe, urls[kind], proc)
        for kind in procs:  # connections, the producer's first batches, the topic's leaders
            await load(urls[kind], WARMUP, concurrency)
        # alternating slices: a load that comes and goes on a shared machine hits both sides
        slices: dict[str, list[dict[str, float]]] = {"bare": [], "gateway": []}
        for _ in range(ROUNDS):
            for kind in procs:
                cpu = _cpu_seconds(procs[kind].pid)
                part = await load(urls[kind], seconds / ROUNDS, concurrency)
                part["cpu_s"] = _cpu_seconds(procs[kind].pid) - cpu
                slices[kind].append(part)
        on_topic = sum((await kafka.end_offsets(settings, topic)).values())
    finally:
        for proc in procs.values():
            _stop(proc)
        async with kafka.admin(settings) as admin:
            mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if mine:
                await admin.delete_topics(mine)
    results = {kind: _merge(parts, seconds) for kind, parts in slices.items()}
    gateway, bare = results["gateway"], results["bare"]
    return {
        "seconds": seconds,
        "concurrency": concurrency,
        "body_bytes": len(payload()),
        "gateway_requests_per_s": gateway["requests_per_s"],
        "gateway_p50_ms": gateway["p50_ms"],
        "gateway_p99_ms": gateway["p99_ms"],
        "gateway_errors": gateway["errors"],
        "bare_requests_per_s": bare["requests_per_s"],
        "bare_p50_ms": bare["p50_ms"],
        "bare_p99_ms": bare["p99_ms"],
        "gateway_cpu_ms_per_request": gateway["cpu_ms_per_request"],
        "bare_cpu_ms_per_request": bare["cpu_ms_per_request"],
        "records_on_topic": on_topic,  # >= every 202 the gateway gave (warm-up ones included)
        "gateway_vs_bare": round(gateway["requests_per_s"] / bare["requests_per_s"], 3)
        if bare["requests_per_s"]
        else 0.0,
        "goal": 0.5,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.gateway", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve_cmd = sub.add_parser("serve", help="(internal) run one server: bare or gateway")
    serve_cmd.add_argument("kind", choices=["bare", "gateway"])
    serve_cmd.add_argument("--port", type=int, required=True)
    parser.add_argument("--bootstrap", default=os.environ.get("VIGIL_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve(args.kind, args.port))
        return 0
    print(json.dumps(asyncio.run(measure(args.bootstrap, args.seconds, args.concurrency)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
