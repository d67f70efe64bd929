"""The serving tests' harness: a demo workspace with trained champions, and the service
started as a user runs it (``bentoml serve`` on a free local port) and stopped again.

``bench/serving.py`` measures the same service with these helpers (bench may import from
tests, never the reverse).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from rapport.settings import Settings, reset_settings
from serving.auth import SCOPES, add_key
from serving.runtime import ROOT, SERVICE, serve_command, server_env

#: quick, small models: the benchmark and the tests measure serving, not model quality
FAST_PARAMS = {"num_boost_round": 60, "num_threads": 1, "min_data_in_leaf": 40}


# --------------------------------------------------------------------------- workspace
@dataclass
class Workspace:
    home: Path
    #: scope -> plain API key with only that scope ("admin" has all)
    keys: dict[str, str]
    #: a sample of customers known to the online store
    customers: list[str]


@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Temporarily set (or, with None, unset) environment variables and reset settings."""
    before = {k: os.environ.get(k) for k in values}
    _set_environment(values)
    try:
        yield
    finally:
        _set_environment(before)


def _set_environment(values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reset_settings()


def prepare_workspace(
    home: Path, customers: int = 3000, seed: int = 7, nba: bool = False
) -> Workspace:
    """Demo data up to today, ingested; churn and value trained and promoted; the online
    store materialized (records and identifier index); champions imported into BentoML's
    store; one key per scope.

    ``nba``: also fit a quick next-best-action model (:func:`add_demo_nba`) and bundle it
    with the champions, so the service ranks real actions."""
    from features.batch import build
    from features.ingest import discover_files, ingest
    from features.online.identifiers import IdentityIndex
    from features.online.materialize import materialize
    from features.online.store import open_store
    from features.spec import default_spec
    from features.tables.segments import snapshot_segments
    from features.warehouse import connect, raw
    from models.bundle import import_champions
    from rapport.demo_data import generate, write
    from rapport.settings import get_settings
    from training import jobs
    from training.datasets import Window, build_training_set

    with environment(RAPPORT_HOME=str(home), RAPPORT_ONLINE_STORE=None, MLFLOW_TRACKING_URI=None):
        settings = get_settings()
        settings.ensure_home()
        data = generate(customers, seed)
        folder = write(data, home / "demo-data", "parquet")["customers"].parent
        con = connect(settings.warehouse_path)
        ingest(con, discover_files(folder), now=datetime.now(UTC))
        training = build_training_set(con, Window(train_cutoffs=2))
        for kind in ("churn", "value"):
            jobs.train(kind, con, params=FAST_PARAMS, data=training)
            jobs.promote(kind)
        now = datetime.now(UTC)  # the segment model of today's snapshot (`rapport features`)
        snapshot_segments(raw(con), build(con, now), now, default_spec().version, now)
        store = open_store(settings.online_store_url)
        materialize(con, store, identity=IdentityIndex.of(settings))
        store.close()
        import_champions(settings)
        if nba:
            add_demo_nba(con, settings)
        con.disconnect()
    keys = {scope: add_key(home, [scope]) for scope in SCOPES}
    return Workspace(home, keys, sample_customers(home))


def workspace_fixture(
    folder: str,
    customers: int,
    seed: int,
    nba: bool = False,
    scope: Literal["module", "session"] = "module",
) -> Any:
    """A test module's workspace fixture (``ws = workspace_fixture(...)``): one
    :func:`prepare_workspace` in a new temporary ``folder`` per ``scope``."""
    import pytest

    @pytest.fixture(scope=scope)
    def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
        home = tmp_path_factory.mktemp(folder)
        return prepare_workspace(home, customers=customers, seed=seed, nba=nba)

    return workspace


@contextlib.contextmanager
def direct_service(home: Path) -> Iterator[Any]:
    """A ``Rapport`` instance over the workspace in ``home``, in this process (BentoML's
    advice: unit-test the service class), stopped after (decisions flushed, files closed)."""
    import asyncio
    import gc

    import pytest

    from serving import accept

    with environment(RAPPORT_HOME=str(home), RAPPORT_ONLINE_STORE=None):
        from serving.service import Rapport

        with pytest.MonkeyPatch.context() as patch:
            # the workspace's own BentoML store, which a server finds through BENTOML_HOME
            patch.setattr(Rapport.inner, "bundle", None)
            instance = Rapport()
    try:
        yield instance
    finally:
        asyncio.run(instance._stop())
        # undo what a worker process does for its whole life
        instance._threads.restore_original_limits()
        accept.uninstall()
        gc.unfreeze()


def granted(scopes: frozenset[str]) -> Any:
    """A BentoML request context whose caller holds ``scopes`` (the guard's grant), to
    call an endpoint directly: ``with ctx.in_request(granted(scopes))``."""
    from starlette.requests import Request

    from serving.middleware import GRANTED

    return Request(
        {"type": "http", "method": "POST", "path": "/", "headers": [], "state": {GRANTED: scopes}}
    )


def outbox_rows(home: Path, table: str) -> list[dict[str, Any]]:
    """Every row of an outbox table the service wrote (sealed and open segments)."""
    import json

    from features.online.events import OPEN_SUFFIX

    folder = home / "outbox" / table
    paths = [*folder.glob(f"*{OPEN_SUFFIX}"), *folder.glob("*.jsonl")]
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def fit_demo_nba(con: Any, scorer: Any, columns: int = 30) -> Any:
    """A quick :class:`models.nba.NbaModel` from the workspace's campaign log: uplift on
    the churn / value scores and the first ``columns`` features *as of now* (leaky, so
    only good for exercising the serving path, never for judging a policy)."""
    from features.batch import build
    from models.catalog import default_catalog
    from models.nba import NbaModel
    from models.uplift import UpliftModel

    now = datetime.now(UTC)
    log = con.con.execute(
        "SELECT customer_id, action, propensity, coalesce(outcome, false) AS outcome, "
        "coalesce(revenue, 0.0) AS revenue FROM campaign_log"
    ).df()
    enriched = scorer.enrich(build(con, now), now)
    X = log[["customer_id"]].merge(enriched, on="customer_id", how="left")
    names = [n for n in scorer.spec.numeric if n in X.columns][:columns]
    names += ["churn_probability", "value_p50", "abc_tier"]
    uplift = UpliftModel(params={"num_iterations": 20, "min_data_in_leaf": 20}).fit(
        X[names],
        log["action"].to_numpy(),
        log["propensity"].to_numpy(),
        log["outcome"].astype("float64").to_numpy(),
        log["revenue"].to_numpy(),
    )
    return NbaModel(uplift, default_catalog(), epsilon=0.1)


def add_demo_nba(con: Any, settings: Settings) -> str:
    """Bundle :func:`fit_demo_nba`'s model with the churn / value champions as a new
    ``rapport-champions`` version in the BentoML store (nba version ``demo``)."""
    from features.online.materialize import META_SEGMENTS
    from features.online.store import open_store
    from features.segments import SegmentModel
    from models.bundle import bundle_champions, load_for_serving
    from models.registry import build_scorer

    champions = load_for_serving(settings)
    store = open_store(settings.online_store_url)
    segments = SegmentModel.from_json(store.get_meta(META_SEGMENTS) or "")
    store.close()
    champions.models["nba"] = fit_demo_nba(con, build_scorer(champions, segments))
    champions.versions["nba"] = "demo"
    return bundle_champions(champions, settings)


def add_churn_version(home: Path) -> str:
    """Train one more churn version in the workspace (a ``@challenger``, not promoted): a
    second champion to swap in while a server runs (the reload tests, bench/swap.py)."""
    from features.warehouse import connect
    from rapport.settings import get_settings
    from training import jobs
    from training.datasets import Window, build_training_set

    with environment(RAPPORT_HOME=str(home), RAPPORT_ONLINE_STORE=None, MLFLOW_TRACKING_URI=None):
        con = connect(get_settings().warehouse_path)
        try:
            training = build_training_set(con, Window(train_cutoffs=1))
            params = {**FAST_PARAMS, "num_boost_round": 30}
            return str(jobs.train("churn", con, params=params, data=training).version)
        finally:
            con.disconnect()


# --------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_service(
    home: Path,
    port: int | None = None,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    service: str = SERVICE,
) -> Server:
    """``bentoml serve`` of the workspace in ``home`` on 127.0.0.1, in the background
    (``service``: another service than Rapport, e.g. the bench's no-op)."""
    port = port or free_port()
    base = {**os.environ, **(env or {})}
    settings = Settings(home=home)
    log = log or home / f"server-{port}.log"
    environment = server_env(settings, workers, base)
    if service != SERVICE:  # server_env sizes the rapport service: size this one too
        name = service.rsplit(":", 1)[1].lower()
        environment["BENTOML_CONFIG_OPTIONS"] += f" services.{name}.workers={int(workers)}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            serve_command("127.0.0.1", port, service),
            env=environment,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    return Server(process, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server, timeout: float = 300.0, path: str = "/readyz") -> None:
    """Poll until ``path`` answers 200; fail with the server's log if it dies or hangs.

    The limit is generous because on a 2-core machine the other test worker may be
    training models while BentoML starts (seen: over 90 s); a dead server fails at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited ({server.process.returncode}):\n{server.log_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    stop(server)
    raise TimeoutError(f"server not ready after {timeout:.0f}s:\n{server.log_text()[-4000:]}")


def stop(server: Server, timeout: float = 30.0) -> int:
    """SIGTERM (graceful: shutdown hooks run), then SIGKILL the group if it hangs."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)  # stray workers of the group
    return int(server.process.returncode)


@contextlib.contextmanager
def serving(
    home: Path, env: Mapping[str, str] | None = None, port: int | None = None, workers: int = 1
) -> Iterator[Server]:
    """The service of ``home`` started, ready, and stopped on the way out (also when it
    never became ready or the body failed), which must be graceful (SIGTERM: the outbox
    sealed): one home for the tests' and the benches' start/wait/stop."""
    server = start_service(home, port=port, workers=workers, env=env)
    try:
        wait_ready(server)
        yield server
    except BaseException:
        stop(server)
        raise
    code = stop(server)
    assert code in (0, -signal.SIGTERM), (
        f"not a graceful stop ({code}):\n{server.log_text()[-3000:]}"
    )


def sample_customers(home: Path, count: int = 500) -> list[str]:
    """Customer ids from the workspace's warehouse (read-only), in a fixed random order."""
    from features.warehouse import connect

    with environment(RAPPORT_HOME=str(home)):
        from rapport.settings import get_settings

        con = connect(get_settings().warehouse_path, read_only=True)
    try:
        rows = con.con.execute(
            f"SELECT customer_id FROM customers ORDER BY hash(customer_id) LIMIT {int(count)}"
        ).fetchall()
    finally:
        con.disconnect()
    return [row[0] for row in rows]
