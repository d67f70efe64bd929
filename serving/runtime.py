"""What the service runs on: its BentoML settings and the server process.

The champions it serves come from :mod:`models.bundle` (the ``rapport-champions`` copy in
the BentoML store, refreshed by every promotion, else the MLflow registry through
:mod:`models.registry`); the scorer over them from :func:`models.registry.build_scorer`.

:func:`serve` starts ``bentoml serve serving.service:Rapport`` with the workspace's
environment: the BentoML home defaults to ``<RAPPORT_HOME>/bentoml`` (unless
``BENTOML_HOME`` is set) and BentoML's usage tracking and MLflow's telemetry are off.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.bundle import OFFLINE_ENV, bentoml_home
from rapport.settings import Settings, get_settings

SERVICE = "serving.service:Rapport"
#: BentoML settings of the service (and of the benchmark's no-op, so its floor is this one's)
SERVICE_OPTIONS: dict[str, Any] = {
    "workers": 1,
    "traffic": {"timeout": 30},
    "logging": {"access": {"enabled": False}},
    # BentoML's per-request Prometheus metrics (multiprocess files) cost ~30% of a /score
    # here; turn them back on with BENTOML_CONFIG_OPTIONS=services.rapport.metrics.enabled=true
    "metrics": {"enabled": False},
    # BentoML records an OpenTelemetry span for every request even at sample rate 0
    # (~20 objects each, kept alive in reference cycles until a full collection, which then
    # stalls requests for 20-100 ms); no spans unless configured, e.g.
    # BENTOML_CONFIG_OPTIONS="services.rapport.tracing.excluded_urls=[]"
    "tracing": {"excluded_urls": ["."]},
}
ROOT = Path(__file__).resolve().parents[1]
#: the cyclic collector's thresholds in a worker: CPython's default for the young
#: generations, a full collection at most every 100 middle ones (default 10). A worker's
#: long-lived heap grows with what it keeps (customers' aggregates, reasons' contributions),
#: so under load the default ran a full collection every ~1 s per worker at ~95 ms each
#: (~8% of its CPU, and the closed loop's p99); bench/serving.py's closed loop (2 workers,
#: 16 clients) measured 1,671-1,672 req/s against 1,395-1,475 with the default, p99 21
#: ms against 55-59 ms (README, Cost per score)
GC_THRESHOLDS = (700, 10, 100)


# --------------------------------------------------------------------------- server
def server_env(
    settings: Settings | None = None,
    workers: int | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a ``bentoml serve`` of this workspace."""
    settings = settings or get_settings()
    env = dict(os.environ if base is None else base)
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    env.setdefault("OMP_NUM_THREADS", "1")  # one-row predictions: workers, not threads
    env["RAPPORT_HOME"] = str(settings.home)
    env.setdefault("BENTOML_HOME", str(bentoml_home(settings)))
    if workers:
        options = [o for o in env.get("BENTOML_CONFIG_OPTIONS", "").split() if o]
        options.append(f"services.rapport.workers={int(workers)}")
        env["BENTOML_CONFIG_OPTIONS"] = " ".join(options)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def serve_command(host: str = "127.0.0.1", port: int = 3000, service: str = SERVICE) -> list[str]:
    """``bentoml serve serving.service:Rapport`` (or another ``service``, e.g. the bench's
    no-op) with this interpreter's BentoML."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        service,
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(ROOT),
    ]


def serve(
    host: str = "127.0.0.1",
    port: int = 3000,
    workers: int | None = None,
    settings: Settings | None = None,
) -> None:
    """Replace this process by the BentoML server (what ``rapport serve`` runs).

    ``workers``: server processes (default: the service's setting, one per core up to 4).
    """
    settings = settings or get_settings()
    settings.ensure_home()
    command = serve_command(host, port)
    os.execve(command[0], command, server_env(settings, workers))


def settle_heap() -> None:
    """Once the worker has loaded what it serves: collect, freeze what survives (the
    imports' and models' heap never changes, so full collections skip it) and set
    :data:`GC_THRESHOLDS`. The service and the benchmark's no-op both call it."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
