"""3. Ingest: requests created per second, through the REST API and through the service layer.

API: a client process keeps ``ingest_concurrency`` keep-alive connections
busy POSTing ``/api/human-input/requests`` (closed loop, over 100
executions) against one daphne for ``ingest_seconds``, after a short warm-up;
the figure is 201 answers per second and the p99 of their latency. Service:
a Django-set-up process (the server's settings and database) calls
``services.request_create`` back to back for as long, with no server running;
it measures the write path itself (transaction, sequence allocation, the
on-commit publish to the channel layer) without HTTP.
"""

from __future__ import annotations

from bench.common import Context, Result, percentiles, write_events
from bench.harness import run_once, server_env
from bench.roles import http_load, service_writer

WARM_UP = 20


def run(ctx: Context) -> Result:
    result = Result("3 ingest")
    scale = ctx.scale
    executions = ctx.executions("ingest", 100)
    server = ctx.daphne()
    try:
        write_events(server.port, executions[:WARM_UP])
        api = run_once(
            http_load,
            ctx.client_cpus,
            scale.ingest_seconds,
            port=server.port,
            kind="create",
            executions=executions,
            duration=scale.ingest_seconds,
            concurrency=scale.ingest_concurrency,
        )
    finally:
        server.stop()
    env = server_env(ctx.backend, HUMANINPUT_CATCHUP_SECONDS=f"{scale.catchup_seconds:g}")
    service_executions = ctx.executions("ingest-service", 100)
    service = run_once(
        service_writer,
        ctx.client_cpus,
        scale.ingest_seconds,
        env=env,
        executions=service_executions,
        duration=scale.ingest_seconds,
        log_path=str(ctx.workdir / "service-writer.log"),
    )
    for label, found in (("API", api), ("service", service)):
        created = found["statuses"].get(201, 0) if label == "API" else found["requests"]
        if created != found["requests"]:
            result.problems.append(f"{label}: answers {found['statuses']} (not all 201)")
        latency = percentiles(found["latencies"])
        rate = round(created / found["seconds"], 1)
        result.add(f"{label}: requests created/s", rate, "req/s", at_least=300 if label == "API" else None)
        result.add(f"{label}: p50 latency", latency["p50"], "ms")
        result.add(f"{label}: p99 latency", latency["p99"], "ms")
        result.details[label] = {**found, "latencies": latency, "per_execution": None}
    result.details["concurrency"] = scale.ingest_concurrency
    return result
