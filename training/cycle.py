"""The scheduled cycle (``rapport cycle``): the closed loop turned once, without a person.

Steps, in order (:data:`STEPS`):

1. ``ingest``: load what the service accepted (the outbox: events, decisions, feedback,
   target lists);
2. ``monitor``: run the monitoring checks (:mod:`training.monitor` when installed; the
   step says so when it is not);
3. ``impact``: the policy's realised impact against the control group, as ``rapport
   impact`` measures it (:func:`training.impact.measure`, every decision with a group and a
   known outcome, per month and overall), appended to the ``impact`` tables as run
   ``im-<cycle run>``: each round records what the loop earned; skipped, and said, while
   there are no treated and control decisions with outcomes;
4. ``guard``: roll a champion back by itself when ``@previous`` does better on labels that
   matured after the champion was evaluated (churn, value: by more than
   ``settings.cycle_rollback_margin``), or when the policy's realised incremental value
   against control over the decisions made since the NBA champion was crowned
   (:func:`training.impact.measure`) has a 95% interval entirely below zero;
5. ``retrain``: the kinds that are due, i.e. whose champion was trained on other data than
   the warehouse holds now and is older than ``settings.cycle_retrain_days`` (on the
   run's clock) or has a monitoring alert (on its kind, or feature drift) since it was
   crowned;
6. ``promote``: the new challengers through their gate (:func:`training.jobs.promote`,
   :func:`training.nba.promote_nba`); the service's bundle is refreshed;
7. ``score``: batch scores of every customer with the champions;
8. ``materialize``: the online store reloaded from the warehouse as of now, with the
   events acknowledged since the ingest step replayed from the outbox
   (:func:`features.online.materialize.load_online_store`, as ``rapport materialize``).

Safe to run every few minutes: a file lock (``<home>/cycle.lock``, released by the kernel
when the process dies) keeps runs from overlapping; when neither the data nor the
champions changed since the last finished run, nothing is done; every run and step is
recorded (warehouse tables ``cycle_runs`` / ``cycle_steps``, and an MLflow run); a run
whose process died is resumed by the next one (same run id and as-of, finished steps
skipped), and each step checks what is already there before it acts: a model already
trained on the current data is promoted rather than trained again, a scoring run of the
same as-of and champions is not repeated. A crash never leaves the service without a
model: aliases move only after a model is registered, scoring writes in one transaction.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from features.online.materialize import load_online_store
from features.outbox_ingest import ingest_outbox
from features.tables import cycle as records
from features.tables.scores import RUNS as SCORE_RUNS
from features.tables.scores import latest_run
from features.warehouse import connect, raw, table_names
from models import registry
from models.registry import CHAMPION, KINDS, PREVIOUS
from rapport.settings import get_settings
from training import jobs, overrides, tracking
from training.datasets import Progress, TrainingSet, Window, default_as_of, fingerprint, lineage

STEPS = ("ingest", "monitor", "impact", "guard", "retrain", "promote", "score", "materialize")
NOTHING_TO_MONITOR = "no scoring run to monitor yet (this run's score step makes the first)"


class CycleBusyError(RuntimeError):
    """Another cycle holds the lock."""


@contextlib.contextmanager
def cycle_lock(path: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``path`` (holding the holder's pid); the kernel
    releases it when the process ends, however it ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise CycleBusyError(f"another cycle is running (pid {holder}, lock {path})") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@dataclass(frozen=True)
class CycleOptions:
    """How a cycle trains; the defaults are the production ones (tests and the demo pass
    fast LightGBM settings and fewer cutoffs)."""

    retrain_after_days: float | None = None
    rollback_margin: float | None = None
    #: LightGBM settings for churn/value retraining (default: the models' own)
    params: Mapping[str, Any] | None = None
    train_cutoffs: int = Window.train_cutoffs
    nba_boot: int = 200
    #: also fit the T- and IPW-T-learners beside DR when retraining NBA (a diagnostic
    #: logged to MLflow; the demo leaves it out)
    nba_compare_methods: bool = True
    #: the run's clock (as-of of its scores, monitoring, impact; ``now`` of its ingest);
    #: default the real one: the demo's simulated periods pass theirs
    now: datetime | None = None


@dataclass
class StepResult:
    name: str
    status: str  # done, skipped, failed
    detail: str


@dataclass
class CycleResult:
    run_id: str
    as_of: datetime
    status: str  # done, nothing to do, failed
    steps: list[StepResult] = field(default_factory=list)
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def line(self) -> str:
        """The one-line summary recorded with the run."""
        done = [f"{s.name}: {s.detail}" for s in self.steps if s.status != "skipped"]
        what = "; ".join(done) if done else "nothing changed"
        again = " (resumed)" if self.resumed else ""
        return f"cycle {self.run_id}{again} {self.status}: {what}"

    def summary(self) -> str:
        lines = [self.line()]
        lines += [f"  {s.name:<12} {s.status:<8} {s.detail}" for s in self.steps]
        return "\n".join(lines)


def _state(con: Any) -> tuple[str, dict[str, str]]:
    """(data fingerprint, champion versions): what the cycle's work depends on."""
    champions: dict[str, str] = {}
    for kind in KINDS:
        if version := registry.aliases(kind).get(CHAMPION):
            champions[kind] = version
    return fingerprint(lineage(con)), champions


def _data_fingerprint(version: Any) -> str | None:
    """The fingerprint of the data a registered version was trained on."""
    tag = registry.run_of(version).data.tags.get(tracking.HOLDOUT_TAG, "")
    return tag.rsplit("|", 1)[-1] if tag else None


class _Cycle:
    """One run: its records, its steps and what they decided."""

    def __init__(self, con: Any, options: CycleOptions, say: Progress) -> None:
        settings = get_settings()
        self.con, self.db, self.say = con, raw(con), say
        self.options = options
        self.retrain_days = (
            settings.cycle_retrain_days
            if options.retrain_after_days is None
            else options.retrain_after_days
        )
        self.margin = (
            settings.cycle_rollback_margin
            if options.rollback_margin is None
            else options.rollback_margin
        )
        records.ensure_tables(self.db)
        found = records.unfinished_run(self.db)
        self.resumed = found is not None
        if found is not None:
            self.run_id, self.as_of = found.run_id, found.as_of
            records.resume_run(self.db, self.run_id)
            say(f"resuming cycle {self.run_id} (its process died; attempt {found.attempts + 1})")
        else:
            now = options.now or datetime.now(UTC)
            self.run_id = now.strftime("cy-%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
            self.as_of = now
            records.start_run(self.db, self.run_id, self.as_of)
        self.fingerprint = ""
        self.training: TrainingSet | None = None

    # ------------------------------------------------------------------ the run
    def run(self) -> CycleResult:
        result = CycleResult(self.run_id, self.as_of, "done", resumed=self.resumed)
        before = records.step_status(self.db, self.run_id)
        for name in STEPS:
            status, detail = before.get(name, ("", ""))
            if status in ("done", "skipped"):
                result.steps.append(StepResult(name, status, detail))
                continue
            if name != "ingest" and self._unchanged():
                result.steps.append(self._record(name, "skipped", self.unchanged_note))
                continue
            self.say(f"cycle step: {name}")
            records.start_step(self.db, self.run_id, name)
            try:
                status, detail = getattr(self, f"_{name}")()
            except Exception as exc:
                detail = f"{type(exc).__name__}: {_first_line(exc)}"
                result.steps.append(self._record(name, "failed", detail))
                result.status = "failed"
                break
            result.steps.append(self._record(name, status, detail))
        if result.ok and all(s.status == "skipped" for s in result.steps if s.name != "ingest"):
            result.status = "nothing to do"
        fp, champions = _state(self.con)
        records.finish_run(self.db, self.run_id, result.status, result.line(), fp, champions)
        _log_mlflow(result)
        return result

    def _record(self, name: str, status: str, detail: str) -> StepResult:
        if status == "skipped" and name not in records.step_status(self.db, self.run_id):
            records.start_step(self.db, self.run_id, name)
        records.finish_step(self.db, self.run_id, name, status, detail)
        return StepResult(name, status, detail)

    _unchanged_cache: bool | None = None
    unchanged_note = ""

    def _unchanged(self) -> bool:
        """Neither data nor champions changed since the last finished run (checked once,
        after ingest)."""
        if self._unchanged_cache is None:
            fp, champions = _state(self.con)
            self.fingerprint = fp
            last = records.last_finished_state(self.db)
            self._unchanged_cache = last is not None and last[1:] == (fp, champions)
            if last is not None:
                self.unchanged_note = f"data and champions unchanged since {last[0]}"
        return self._unchanged_cache

    # ------------------------------------------------------------------ steps
    def _ingest(self) -> tuple[str, str]:
        now = self.options.now or datetime.now(UTC)
        report = ingest_outbox(self.con, get_settings().outbox_dir, now)
        inserted = sum(t.inserted for t in report.tables.values())
        if not report.tables and report.lists is None:
            return "done", "outbox empty"
        lists = f", {report.lists.recorded} target lists" if report.lists else ""
        return "done", f"{inserted:,} new rows{lists}, {report.quarantined:,} quarantined"

    def _monitor(self) -> tuple[str, str]:
        try:
            monitor = importlib.import_module("training.monitor")
        except ModuleNotFoundError:
            return "skipped", "monitoring not available (training.monitor is not in this build)"
        if not _has_table(self.db, SCORE_RUNS) or latest_run_count(self.db) == 0:
            return "skipped", NOTHING_TO_MONITOR
        # the cycle's own connection: a second read-write one to the file would conflict
        found = monitor.run(as_of=self.as_of, con=self.con, progress=self.say)
        return "done", f"run {found.run_id}: {len(found.checks)} checks, {len(found.alerts)} alerts"

    def _impact(self) -> tuple[str, str]:
        from features.tables.impact import IMPACT
        from training import impact

        run_id = f"im-{self.run_id}"
        if _has_table(self.db, IMPACT):
            found = self.db.execute(f"SELECT count(*) FROM {IMPACT} WHERE run_id = ?", [run_id])
            if (found.fetchone() or (0,))[0]:
                return "done", f"already measured as run {run_id}"
        try:
            result = impact.measure(self.con, now=self.as_of, run_id=run_id).record(self.con)
        except impact.NoImpactDataError as exc:
            return "skipped", exc.headline
        overall = result.table[result.table["period"] == "all"]
        if overall.empty:
            return "done", f"run {run_id}: no period with treated and control customers"
        row = overall.iloc[0]
        return "done", (
            f"run {run_id}: incremental value per customer {row['incremental_value']:,.2f} "
            f"[{row['incremental_value_lo']:,.2f}, {row['incremental_value_hi']:,.2f}] "
            f"({int(row['treated_customers']):,} treated, "
            f"{int(row['control_customers']):,} control customers)"
        )

    def _alerts_since(self, kind: str, since: datetime) -> int:
        """Alerts on ``kind`` or on the features (every model reads them) since ``since``."""
        if not _has_table(self.db, "monitor_checks"):
            return 0
        row = self.db.execute(
            "SELECT count(*) FROM monitor_checks WHERE kind IN (?, 'features') "
            "AND level = 'alert' AND checked_at > ?",
            [kind, since],
        ).fetchone()
        return int(row[0]) if row else 0

    def _guard(self) -> tuple[str, str]:
        notes = []
        for kind in ("churn", "value"):
            note = self._guard_holdout(kind)
            if note:
                notes.append(note)
        note = self._guard_policy()
        if note:
            notes.append(note)
        return "done", "; ".join(notes) or "champions hold"

    def _guard_holdout(self, kind: str) -> str:
        """Roll back when @previous beats the champion on a newer matured holdout."""
        held = registry.aliases(kind)
        if CHAMPION not in held or PREVIOUS not in held:
            return ""
        champion = registry.get_version(kind, version=held[CHAMPION])
        run = registry.run_of(champion).data
        horizon = int(run.params.get("horizon_days", get_settings().horizon_days))
        evaluated = run.tags.get("rapport.test_cutoff", "")
        latest = default_as_of(self.con, horizon)
        if f"{latest:%Y-%m-%d}" <= evaluated:
            return ""  # no labels matured since the champion was evaluated
        frame = jobs.holdout(self.con, latest, horizon)
        models = {
            "champion": registry.load_model(kind, version=held[CHAMPION])[0],
            "previous": registry.load_model(kind, version=held[PREVIOUS])[0],
        }
        metric, _ = tracking.GATE_METRIC[kind]  # type: ignore[index]
        scored = jobs.evaluate_holdout(
            kind,  # type: ignore[arg-type]
            models,
            frame,
            self.con,
            horizon,
            baselines=False,
        )[0].metrics
        new, old = scored["champion"][metric], scored["previous"][metric]
        if old - new <= self.margin:
            return ""
        reason = (
            f"realised {metric} on {latest:%Y-%m-%d}: champion v{held[CHAMPION]} {new:.4f}, "
            f"previous v{held[PREVIOUS]} {old:.4f} (worse by more than {self.margin:g})"
        )
        overrides.rollback(self.con, kind, reason, action="auto_rollback", cycle_run=self.run_id)
        return f"{kind} rolled back to v{held[PREVIOUS]}: {reason}"

    def _guard_policy(self) -> str:
        """Roll the NBA champion back when the decisions made since it was crowned earned
        less than the control group's: the 95% interval of the realised incremental value
        per customer entirely below zero. Only its own decisions: the decisions of a
        champion it replaced (or that a rollback removed) never judge it."""
        from training import impact

        held = registry.aliases("nba")
        if CHAMPION not in held:
            return ""
        since = registry.crowned_at("nba", registry.get_version("nba", version=held[CHAMPION]))
        try:
            measured = impact.measure(self.con, since=since, now=self.as_of)
        except impact.NoImpactDataError:
            return ""  # no treated and control decisions with outcomes since its crowning
        overall = measured.table[measured.table["period"] == "all"]
        if overall.empty or not overall.iloc[0]["incremental_value_hi"] < 0:
            return ""
        row = overall.iloc[0]
        reason = (
            f"realised incremental value against control of the decisions since "
            f"v{held[CHAMPION]} was crowned ({since:%Y-%m-%d %H:%M} UTC): "
            f"{row['incremental_value']:.2f} [{row['incremental_value_lo']:.2f}, "
            f"{row['incremental_value_hi']:.2f}] per customer, entirely below zero"
        )
        if PREVIOUS not in held:
            return f"nba v{held[CHAMPION]} should roll back ({reason}) but has no @previous"
        overrides.rollback(self.con, "nba", reason, action="auto_rollback", cycle_run=self.run_id)
        return f"nba rolled back to v{held[PREVIOUS]}: {reason}"

    def _due(self, kind: str) -> str:
        """Why ``kind`` should be retrained now ("" when it should not)."""
        held = registry.aliases(kind)
        if CHAMPION not in held:
            return ""
        champion = registry.get_version(kind, version=held[CHAMPION])
        if _data_fingerprint(champion) == self.fingerprint:
            return ""
        crowned = registry.crowned_at(kind, champion)
        alerts = self._alerts_since(kind, crowned)
        if alerts:
            return f"{alerts} monitoring alerts since v{champion.version} was crowned"
        # on the run's clock (the demo's periods pass theirs); never negative (a champion
        # crowned after a resumed run's as-of)
        age = max(self.as_of - crowned, timedelta(0))
        if age >= timedelta(days=self.retrain_days):
            return f"champion v{champion.version} is {age.days} days old and the data changed"
        return ""

    def _trained_on_current(self, kind: str) -> str | None:
        """The newest version above the champion trained on the current data, if any; never
        the ``@previous`` above it (a champion rolled back is not promoted again here)."""
        held = registry.aliases(kind)
        champion = int(held.get(CHAMPION, "0"))
        for version in reversed(registry.versions(kind)):
            if int(version.version) <= champion:
                return None
            if str(version.version) == held.get(PREVIOUS):
                continue
            if _data_fingerprint(version) == self.fingerprint:
                return str(version.version)
        return None

    def _retrain(self) -> tuple[str, str]:
        done = []
        for kind in KINDS:
            why = self._due(kind)
            if not why:
                continue
            existing = self._trained_on_current(kind)
            if existing:
                done.append(f"{kind} v{existing} already trained on this data")
                continue
            self.say(f"retraining {kind}: {why}")
            if kind == "nba":
                from training.nba import train_nba

                version = train_nba(
                    self.con,
                    n_boot=self.options.nba_boot,
                    compare_methods=self.options.nba_compare_methods,
                    progress=self.say,
                )
                done.append(f"{kind} v{version.version} ({why})")
                continue
            if self.training is None or not self.training.serves(kind):
                window = Window(
                    horizon_days=get_settings().horizon_days,
                    train_cutoffs=self.options.train_cutoffs,
                )
                self.training = jobs.training_set(kind, self.con, window, self.say)
            trained = jobs.train(
                kind,
                self.con,
                params=self.options.params,
                data=self.training,
                run_name=f"cycle-{kind}",
                progress=self.say,
            )
            done.append(f"{kind} v{trained.version} ({why})")
        return ("done", "; ".join(done)) if done else ("skipped", "no kind due")

    def _promote(self) -> tuple[str, str]:
        from models.bundle import refresh_bundle

        outcomes = []
        for kind in KINDS:
            candidate = self._trained_on_current(kind)
            if candidate is None:
                continue
            if kind == "nba":
                from training.nba import promote_nba

                result = promote_nba(candidate)
            else:
                result = jobs.promote(kind, candidate, con=self.con, progress=self.say)
            outcomes.append(result.summary())
        tag, note = refresh_bundle()  # also after a kill between alias and bundle
        if not outcomes:
            return "skipped", "no new challenger"
        bundled = f" (bundle {tag})" if tag else f" (not bundled: {note})"
        return "done", "; ".join(outcomes) + bundled

    def _score(self) -> tuple[str, str]:
        from training.scoring import score_all

        _, champions = _state(self.con)
        if _has_table(self.db, SCORE_RUNS):
            last = latest_run(self.db)
            if last.as_of == self.as_of and last.versions == champions:
                return "done", f"already scored as run {last.run_id}"
        run = score_all(self.con, self.as_of, progress=self.say)
        return "done", f"{run.rows:,} customers as run {run.run_id}"

    def _materialize(self) -> tuple[str, str]:
        # as of now, not of the run's as-of: the live view holds everything acknowledged
        # so far, the outbox's events since this run's ingest replayed (the same path as
        # `rapport materialize`). Redone whole when a killed run resumes (idempotent).
        loaded = load_online_store(self.con, progress=self.say)
        return "done", f"{loaded.records:,} customer records"


def latest_run_count(db: Any) -> int:
    row = db.execute(f"SELECT count(*) FROM {SCORE_RUNS}").fetchone()
    return int(row[0]) if row else 0


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _has_table(db: Any, name: str) -> bool:
    return name in table_names(db)


def _log_mlflow(result: CycleResult) -> None:
    """One MLflow run per cycle run: status, steps as tags, the one-line summary as note."""
    import mlflow

    experiment = tracking.configure()
    with (
        registry.quiet(),
        mlflow.start_run(experiment_id=experiment, run_name=f"cycle-{result.run_id}"),
    ):
        mlflow.set_tags(
            {
                "rapport.kind": "cycle",
                "rapport.cycle_run": result.run_id,
                "rapport.cycle_status": result.status,
                "rapport.cycle_as_of": result.as_of.isoformat(),
                "mlflow.note.content": result.line(),
                **{f"step.{s.name}": f"{s.status}: {s.detail}"[:4000] for s in result.steps},
            }
        )
        mlflow.log_metric("resumed", float(result.resumed))


def run_cycle(options: CycleOptions | None = None, progress: Progress | None = None) -> CycleResult:
    """Turn the loop once in the workspace (see the module docstring); CycleBusyError when
    another cycle holds the lock. The caller exits non-zero when ``result.ok`` is False."""
    settings = get_settings()
    settings.ensure_home()
    say = progress or (lambda _: None)
    with cycle_lock(settings.home / "cycle.lock"):
        con = connect(settings.warehouse_path)
        try:
            return _Cycle(con, options or CycleOptions(), say).run()
        finally:
            con.disconnect()


def describe_runs(limit: int = 10) -> str:
    """The latest cycle runs, one line each (``rapport cycle --history``)."""
    settings = get_settings()
    con = connect(settings.warehouse_path)
    try:
        frame = records.read(raw(con), records.RUNS)
    finally:
        con.disconnect()
    if frame.empty:
        return "no cycle has run yet"
    frame = frame.sort_values("started_at", ascending=False).head(limit)
    return "\n".join(
        f"{r.started_at:%Y-%m-%d %H:%M:%S} {r.status:<13} {r.summary or ''}"
        for r in frame.itertuples()
    )
