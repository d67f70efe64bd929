"""The ``rapport`` command line: thin wrappers that parse options and call library code.

Errors, one way each: a bad option value is a usage error (the option's click type rejects
it, naming the option, exit 2); a library error (bad data, a missing prerequisite: every
one the library raises on purpose derives from ValueError or LookupError, or is a missing
file, and its message names the file, field or command to run) is printed as
``Error: <message>``, exit 1, by the command group itself (:class:`Commands`), so no
command converts errors on its own; validate and ``ingest --strict`` exit 2 when rows were
quarantined; ``ingest`` exits 3 (:data:`EXIT_QUARANTINED`) when a source was mostly or
wholly quarantined, with or without ``--strict``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rapport.demo import DEFAULT_PERIODS
from rapport.settings import Settings, get_settings

#: ``rapport ingest``: a source had more than the allowed share of its rows quarantined
EXIT_QUARANTINED = 3
#: ``rapport forget``: lines in open outbox segments of a running service remain: run again
EXIT_RETRY_FORGET = 4

if TYPE_CHECKING:
    from features.files import FileOptions


def say(message: str) -> None:
    click.echo(message, err=False)


def progress(message: str) -> None:
    """Progress lines go to stderr so stdout stays clean for data."""
    click.echo(f"  … {message}", err=True)


@contextmanager
def step(title: str) -> Iterator[None]:
    start = time.perf_counter()
    click.echo(click.style(f"▶ {title}", bold=True), err=True)
    yield
    click.echo(f"  done in {time.perf_counter() - start:.1f}s", err=True)


def parse_when(value: str | None) -> datetime | None:
    """A date or timestamp from the command line as a UTC instant (naive = UTC). An option
    not given (None or empty) gives None, so the library applies its own default; a
    command that means "now" says so itself."""
    from features.timeutil import as_utc

    if value is None or not value.strip():
        return None
    try:
        return as_utc(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a date (use YYYY-MM-DD)") from exc


def parse_days(value: str) -> int:
    text = value.strip().lower().removesuffix("d")
    if not text.isdigit() or int(text) <= 0:
        raise click.BadParameter(f"{value!r} is not a horizon like 90d")
    return int(text)


class When(click.ParamType):
    """A date or timestamp option (:func:`parse_when`); absent, it stays None."""

    name = "DATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value if isinstance(value, datetime) else parse_when(value)


class Days(click.ParamType):
    """A horizon in days (:func:`parse_days`): ``90d`` or ``90``."""

    name = "DAYS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value if isinstance(value, int) else parse_days(str(value))


class Scopes(click.ParamType):
    """Comma-separated API key scopes, each one the service knows."""

    name = "SCOPES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from serving.auth import SCOPES

        if isinstance(value, list):
            return value
        chosen = [s.strip() for s in str(value).split(",") if s.strip()]
        unknown = [s for s in chosen if s not in SCOPES]
        if unknown or not chosen:
            what = f"unknown scope(s) {', '.join(unknown)}" if unknown else "no scope"
            self.fail(f"{what}; expected some of {', '.join(SCOPES)}", param, ctx)
        return chosen


WHEN, DAYS = When(), Days()
#: path options: a file or folder (it need not exist yet), or one that must exist
FILE = click.Path(dir_okay=False, path_type=Path)
FOLDER = click.Path(file_okay=False, path_type=Path)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


def open_warehouse(settings: Settings, read_only: bool = False) -> Any:
    """The warehouse, waiting (``rapport --wait``) while another process holds it."""
    from features.warehouse import WarehouseLockedError, connect

    if read_only and not settings.warehouse_path.exists():
        raise click.ClickException(
            f"no warehouse at {settings.warehouse_path}; run `rapport ingest DIR` "
            "(or `rapport demo`) first"
        )
    settings.ensure_home()
    ctx = click.get_current_context(silent=True)
    wait = ctx.find_root().params.get("wait") if ctx is not None else None
    wait = settings.warehouse_wait_seconds if wait is None else wait

    def waiting() -> None:
        progress(
            f"waiting up to {wait:.0f} s for the warehouse: another process holds its lock "
            "(`rapport --wait SECONDS ...` to change)"
        )

    try:
        return connect(settings.warehouse_path, read_only=read_only, wait=wait, on_wait=waiting)
    except WarehouseLockedError as exc:
        raise click.ClickException(f"{exc}; try again later or with a longer --wait") from None


#: commands that serve people (or start what does) and keep the normal CPU priority;
#: every other command is a batch job and lowers its own (:func:`lower_priority`)
SERVING_COMMANDS = frozenset({"serve", "ui", "demo"})


def lower_priority(niceness: int) -> int:
    """Raise this process's niceness to at least ``niceness`` (never lowers it; 0: leave
    it) and return it. On a machine shared with the service, a batch job at normal priority
    takes its share of every core (DuckDB and LightGBM use them all) and the service's
    ``/score`` p99 grew 4.75x while ``rapport score`` ran (issue 22, ``bench/contention.py``);
    niced, the job gets the CPU the service leaves idle."""
    current = os.nice(0)
    if niceness > current:
        current = os.nice(niceness - current)
    return current


#: what the library raises for bad input or a missing prerequisite (IngestError,
#: CatalogError, TargetError, ExpressionError, ChampionsMissingError, NoScoresError, ...)
LIBRARY_ERRORS = (ValueError, LookupError, FileNotFoundError)


class Commands(click.Group):
    """The command group: a library error from any command becomes one clean line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LIBRARY_ERRORS as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(
    cls=Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="How long a command waits for the warehouse while another process holds it "
    "(default RAPPORT_WAREHOUSE_WAIT_SECONDS, 60).",
)
@click.pass_context
def main(ctx: click.Context, wait: float | None) -> None:
    """Rapport: churn, value and next-best-action for every customer, live.

    The workspace (warehouse, online store, MLflow store) is RAPPORT_HOME, default ./.rapport.
    Batch commands run at a lower CPU priority (RAPPORT_BATCH_NICE, default 10; 0: off).
    RAPPORT_ENGINE=spark runs ingest, resolve, features, train, score, targets and
    materialize on Spark over the lake (RAPPORT_LAKE_URI); see the README's "Spark".
    """
    if ctx.invoked_subcommand not in SERVING_COMMANDS and not ctx.resilient_parsing:
        lower_priority(get_settings().batch_nice)


# --------------------------------------------------------------------------- data
@main.command("demo-data")
@click.option("--customers", "-n", default=20_000, show_default=True, help="Customers to simulate.")
@click.option("--seed", default=42, show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder (default: <home>/demo-data).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True
)
@click.option("--end", type=WHEN, default=None, help="Last day of history (default: today, UTC).")
@click.option(
    "--truth-as-of",
    type=WHEN,
    default=None,
    help="Cutoff of the ground-truth tables (default: end minus the horizon).",
)
@click.option(
    "--horizon", type=DAYS, default="90d", show_default=True, help="Truth horizon, e.g. 90d."
)
def demo_data(
    customers: int,
    seed: int,
    out_dir: Path | None,
    fmt: str,
    end: datetime | None,
    truth_as_of: datetime | None,
    horizon: int,
) -> None:
    """Simulate realistic contract tables plus ground-truth tables."""
    from rapport.demo_data import generate, write

    settings = get_settings()
    out_dir = out_dir or settings.home / "demo-data"
    data = generate(
        customers,
        seed,
        end=end.replace(hour=0, minute=0, second=0, microsecond=0) if end else None,
        truth_as_of=truth_as_of,
        horizon_days=horizon,
        progress=progress,
    )
    paths = write(data, out_dir, fmt)  # type: ignore[arg-type]
    for name, path in paths.items():
        say(f"{name:>16}: {path}")
    say(f"history ends {data.end:%Y-%m-%d}; truth as of {data.truth_as_of:%Y-%m-%d}")


def _files(directory: Path | None, explicit: dict[str, Path | None]) -> dict[str, Path]:
    from features.ingest import discover_files

    files = discover_files(directory) if directory else {}
    files.update({k: v for k, v in explicit.items() if v is not None})
    if not files:
        raise click.UsageError("give a folder of <table>.parquet|csv files or --orders etc.")
    return files


def _table_options(fn: Callable) -> Callable:
    for table in ("outcomes", "campaign_log", "interactions", "orders", "customers"):
        fn = click.option(
            f"--{table.replace('_', '-')}",
            table,
            type=EXISTING_FILE,
            help=f"Path of the {table} file"
            + (" (decision_id, outcome, revenue, responded_at)." if table == "outcomes" else "."),
        )(fn)
    return fn


def _file_format_options(fn: Callable) -> Callable:
    """How the CSV files are written (see features.files.FileOptions)."""
    options = [
        click.option(
            "--delimiter", default=None, help="Field delimiter (default: detected from the header)."
        ),
        click.option(
            "--encoding", default="utf-8", show_default=True, help="e.g. latin-1, cp1252."
        ),
        click.option(
            "--decimal",
            type=click.Choice([".", ","]),
            default=".",
            show_default=True,
            help="Decimal separator of numbers.",
        ),
        click.option(
            "--thousands",
            type=click.Choice([",", ".", " ", "'"]),
            default=None,
            help="Thousands separator of numbers (digits must come in groups of three).",
        ),
        click.option(
            "--date-format",
            default=None,
            help="strftime format of dates that are not ISO 8601, e.g. '%d/%m/%Y' "
            "(required for day/month dates: never guessed).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _read_options(fmt: dict[str, str | None]) -> FileOptions:
    from features.files import FileError, FileOptions

    try:
        return FileOptions(
            delimiter=fmt["delimiter"].replace("\\t", "\t") if fmt["delimiter"] else None,
            encoding=fmt["encoding"] or "utf-8",
            decimal=fmt["decimal"] or ".",
            thousands=fmt["thousands"],
            date_format=fmt["date_format"],
        )
    except FileError as exc:
        raise click.UsageError(str(exc)) from exc


_FORMAT_KEYS = ("delimiter", "encoding", "decimal", "thousands", "date_format")


def _split_format(kwargs: dict[str, Any]) -> tuple[FileOptions, dict[str, Path | None]]:
    fmt = {k: kwargs.pop(k) for k in _FORMAT_KEYS}
    return _read_options(fmt), kwargs


@main.command()
@click.argument("directory", required=False, type=EXISTING_FOLDER)
@_table_options
@_file_format_options
@click.option("--strict", is_flag=True, help="Exit 2 when any row is quarantined.")
@click.option(
    "--max-quarantined",
    type=click.FloatRange(0, 1),
    default=None,
    metavar="SHARE",
    help="Exit 3 when a source has more than this share of its rows quarantined, or all "
    "of them (default RAPPORT_MAX_QUARANTINE_SHARE, 0.2).",
)
@click.option(
    "--outbox",
    is_flag=True,
    help="Also load what the scoring service accepted (events, decisions, feedback) from "
    "<home>/outbox; alone, only that.",
)
@click.option(
    "--catalog",
    type=EXISTING_FILE,
    default=None,
    help="Action catalog whose attribution_days windows attribute orders to decisions "
    "(default: the packaged models/default_catalog.yaml).",
)
def ingest(
    directory: Path | None,
    strict: bool,
    max_quarantined: float | None,
    outbox: bool,
    catalog: Path | None,
    **kwargs: Any,
) -> None:
    """Validate and load contract files into the warehouse (idempotent).

    With RAPPORT_ENGINE=spark the files are checked on Spark (the same checks and
    reasons) and the validated tables and the quarantine written to the lake
    (RAPPORT_LAKE_URI) as Parquet, where the Spark jobs read them.

    Bad rows go to the `quarantine` table with a reason; good rows always land. Exits 3
    when a source had more than --max-quarantined of its rows quarantined (or all), 2
    with --strict when any row was. Outcomes (an outcomes file, /feedback from the
    outbox, inline in the campaign log, attributed from orders) become versions of their
    decisions' outcomes (table `outcomes`, every version in `outcome_history`).
    """
    from features.ingest import ingest as run_ingest
    from features.lake import export_tables, table_rows
    from features.outbox_ingest import ingest_outbox
    from features.warehouse import raw
    from models.catalog import default_catalog, parse_catalog

    try:
        actions = (
            parse_catalog(catalog.read_text(encoding="utf-8"), source=str(catalog))
            if catalog
            else default_catalog()
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--catalog") from exc
    windows = actions.attribution()
    options, tables = _split_format(kwargs)
    settings = get_settings()
    reports = []
    files = _files(directory, tables) if directory or any(tables.values()) or not outbox else {}
    spark_engine = settings.engine == "spark"
    con = open_warehouse(settings)
    try:
        if files and spark_engine:  # checked on Spark, written to the lake
            from features.spark import session
            from features.spark_ingest import ingest as spark_ingest
            from features.spark_ingest import lake_root

            lake_root(settings.lake)  # an object-store lake is refused before Spark starts
            reports.append(
                spark_ingest(
                    session(settings),
                    con,
                    files,
                    now=datetime.now(UTC),
                    lake=settings.lake,
                    options=options,
                    attribution=windows,
                    region=settings.phone_region,
                )
            )
        elif files:
            reports.append(
                run_ingest(
                    con,
                    files,
                    now=datetime.now(UTC),
                    options=options,
                    attribution=windows,
                    region=settings.phone_region,
                )
            )
        if outbox:
            reports.append(
                ingest_outbox(con, settings.outbox_dir, now=datetime.now(UTC), attribution=windows)
            )
        # the outbox is loaded by DuckDB: mirror the warehouse into the lake after it
        written = export_tables(raw(con), settings.lake) if spark_engine and outbox else None
    finally:
        con.disconnect()  # before any exit: in-process callers (tests, notebooks) reopen it
    for report in reports:
        say(report.summary())
    if spark_engine and (files or written is not None):
        rows = ", ".join(f"{name} {n:,}" for name, n in table_rows(settings.lake).items())
        say(f"lake (engine spark): {rows} rows, as Parquet under {settings.lake}/tables")
    share = settings.max_quarantine_share if max_quarantined is None else max_quarantined
    if over := [line for report in reports for line in report.over_quarantine(share)]:
        for line in over:
            click.echo(f"Error: {line} (more than {share:.0%}): check the file", err=True)
        sys.exit(EXIT_QUARANTINED)
    if strict and any(report.quarantined for report in reports):
        sys.exit(2)


@main.command()
@click.argument("directory", required=False, type=EXISTING_FOLDER)
@_table_options
@_file_format_options
def validate(directory: Path | None, **kwargs: Any) -> None:
    """Check contract files and report bad rows per reason, without loading anything."""
    from features.ingest import ingest

    options, tables = _split_format(kwargs)
    files = _files(directory, tables)
    settings = get_settings()
    report = ingest(
        open_warehouse(settings),
        files,
        now=datetime.now(UTC),
        options=options,
        region=settings.phone_region,
        commit=False,
    )
    say(report.summary())
    if report.quarantined:
        sys.exit(2)


# --------------------------------------------------------------------------- features
@main.command()
@click.option(
    "--as-of", type=WHEN, default=None, help="Cutoff (default: now). Events before it count."
)
@click.option(
    "--out", type=FILE, default=None, help="Write the features to a .parquet or .csv file."
)
@click.option(
    "--segments/--no-segments",
    default=True,
    show_default=True,
    help="Add RFM scores, RFM segment and ABC tier (fitted on this snapshot and stored).",
)
def features(as_of: datetime | None, out: Path | None, segments: bool) -> None:
    """Build every customer's features as of a cutoff (point in time correct).

    With segments, the RFM / ABC cut points fitted on this snapshot are stored in the
    warehouse as the current segment model (what `rapport materialize` serves). The file
    holds ``customer_id``, ``as_of`` (the cutoff) and the features: what the registered
    models' pyfuncs take as they are. With RAPPORT_ENGINE=spark: built on Spark from the
    lake and written to <lake>/features/as_of=<cutoff>/ (--out is refused).
    """
    import pandas as pd

    from features.batch import build
    from features.segments import describe_segments, with_segments
    from features.spec import default_spec
    from features.tables.segments import snapshot_segments
    from features.warehouse import raw

    cutoff = as_of or datetime.now(UTC)
    spec = default_spec()
    settings = get_settings()
    if settings.engine == "spark":
        if out is not None:
            raise click.UsageError(
                "--out: with RAPPORT_ENGINE=spark the features are written to the lake "
                f"({settings.lake}/features); read them there"
            )
        _features_on_spark(settings, cutoff, segments)
        return
    con = open_warehouse(settings, read_only=not segments)
    try:
        with step(f"building features as of {cutoff:%Y-%m-%d %H:%M} UTC"):
            frame = build(con, cutoff)
            if segments:
                fitted = snapshot_segments(raw(con), frame, cutoff, spec.version, datetime.now(UTC))
                frame = with_segments(frame, fitted.model)
    finally:
        con.disconnect()
    say(f"{len(frame):,} customers x {len(spec.names)} features, feature set {spec.version}")
    if segments:
        say(f"stored {fitted.describe()}")
    if segments and len(frame):
        say(describe_segments(frame))
    if out:
        # the cutoff travels with the features: the value model reads its month (season)
        frame.insert(1, "as_of", pd.Timestamp(cutoff))
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".csv":
            frame.to_csv(out, index=False)
        else:
            frame.to_parquet(out, index=False)
        say(f"written to {out}")


def _features_on_spark(settings: Settings, cutoff: datetime, segments: bool) -> None:
    """``rapport features`` with the Spark engine: lake in, lake out; the segment model
    (fitted on the driver from the few columns it reads) stored in the warehouse."""
    from features.spark import session, snapshot_features
    from features.spec import default_spec
    from features.tables.segments import snapshot_segments
    from features.warehouse import raw

    spec = default_spec()
    with step(f"building features as of {cutoff:%Y-%m-%d %H:%M} UTC on Spark"):
        snapshot = snapshot_features(session(settings), settings.lake, cutoff, spec)
    say(f"{snapshot.rows:,} customers x {len(spec.names)} features, feature set {spec.version}")
    say(f"written to {snapshot.uri}")
    if segments:
        con = open_warehouse(settings)
        try:
            fitted = snapshot_segments(
                raw(con), snapshot.fit, cutoff, spec.version, datetime.now(UTC)
            )
        finally:
            con.disconnect()
        say(f"stored {fitted.describe()}")


# --------------------------------------------------------------------------- models
KIND = click.Choice(["churn", "value"])


@main.command()
@click.argument("kind", type=click.Choice(["churn", "value", "nba"]))
@click.option(
    "--as-of",
    type=WHEN,
    default=None,
    help="churn/value: holdout cutoff (default: latest with a full horizon); "
    "nba: learn from decisions before it (default: all).",
)
@click.option(
    "--horizon", type=DAYS, default=None, help="Label horizon, e.g. 90d (default from settings)."
)
@click.option(
    "--catalog",
    type=EXISTING_FILE,
    default=None,
    help="nba only: action catalog YAML (default: the packaged models/default_catalog.yaml).",
)
def train(kind: str, as_of: datetime | None, horizon: int | None, catalog: Path | None) -> None:
    """Train a churn, value or next-best-action model, log it to MLflow, register it.

    churn/value: time-split cutoffs. nba: uplift per action (DR learner) from the campaign
    log joined with features and the churn/value champions' scores at each decision's week;
    the latest weeks are held out for off-policy evaluation. New versions are @challenger.
    With RAPPORT_ENGINE=spark: churn/value's training set is built on Spark from the lake
    (sampled to RAPPORT_TRAIN_MAX_ROWS), nba's weekly features too (decisions from the
    warehouse); the run is tagged rapport.engine.
    """
    from training import jobs

    if kind != "nba" and catalog is not None:
        raise click.UsageError("--catalog is for `rapport train nba` only")
    con = open_warehouse(get_settings(), read_only=True)
    try:
        if kind == "nba":
            from training.nba import train_nba

            say(train_nba(con, as_of, catalog, progress=progress).summary())
            return
        result = jobs.train(kind, con, as_of=as_of, horizon_days=horizon, progress=progress)
    finally:
        con.disconnect()
    say(result.summary())


@main.command()
@click.option(
    "--as-of",
    type=WHEN,
    default=None,
    help="Holdout cutoff (default: latest with a full horizon).",
)
def evaluate(as_of: datetime | None) -> None:
    """Compare champion, challenger and baselines on the latest holdout."""
    from training import jobs

    con = open_warehouse(get_settings(), read_only=True)
    say(jobs.evaluate(con, as_of=as_of, progress=progress).summary())


@main.command()
@click.argument("kind", type=KIND)
@click.option("--trials", default=20, show_default=True, help="Optuna trials to add.")
def tune(kind: str, trials: int) -> None:
    """Tune with Optuna (TPE + pruning); the study is stored and resumes on re-run."""
    from training import jobs

    con = open_warehouse(get_settings(), read_only=True)
    say(jobs.tune(kind, con, trials, progress=progress).summary())


@main.command()
@click.argument("kind", type=click.Choice(["churn", "value", "nba"]))
@click.option("--version", default=None, help="Registered version (default: the newest).")
@click.option(
    "--force",
    is_flag=True,
    help="Skip the gate (needs --version); recorded as an override in champion_changes.",
)
@click.option("--reason", default="", help="Why (recorded; required with --force).")
def promote(kind: str, version: str | None, force: bool, reason: str) -> None:
    """Make a version @champion only if it beats the current champion on the same holdout.

    nba: only if its doubly-robust lower confidence bound beats the champion's DR estimate
    of the policy value on the candidate's holdout (else it stays @challenger, with why).
    --force crowns --version without the gate; the override is recorded with --reason.
    """
    if force:
        if version is None:
            raise click.UsageError("--force needs --version (which version to crown)")
        from training.overrides import force_promote

        con = open_warehouse(get_settings())
        try:
            override = force_promote(con, kind, version, reason or "forced by an operator")
        finally:
            con.disconnect()
        say(override.summary())
        return
    if kind == "nba":
        from training.nba import promote_nba

        result = promote_nba(version)
    else:
        from training import jobs

        con = open_warehouse(get_settings(), read_only=True)
        result = jobs.promote(kind, version=version, con=con, progress=progress)
    say(result.summary())
    if result.promoted:  # the promotion refreshed the champions the service loads
        _said_bundle(result.bundle, result.bundle_note)


@main.command()
@click.argument("kind", type=click.Choice(["churn", "value", "nba"]))
@click.option("--to", "to", default=None, help="Restore this version (default: @previous).")
@click.option("--reason", default="", help="Why (recorded in champion_changes and MLflow).")
def rollback(kind: str, to: str | None, reason: str) -> None:
    """Restore the previous champion (or --to VERSION); the one replaced becomes @previous.

    The change is recorded with its reason (warehouse table champion_changes, MLflow version
    tags) and the champions bundle is refreshed: a running service follows it by itself.
    """
    from training.overrides import rollback as run_rollback

    con = open_warehouse(get_settings())
    try:
        override = run_rollback(con, kind, reason or "rolled back by an operator", to)
    finally:
        con.disconnect()
    say(override.summary())


@main.command()
@click.option("--history", is_flag=True, help="Print the latest recorded runs and exit.")
def cycle(history: bool) -> None:
    """Turn the loop once: ingest the outbox, monitor, roll back harmful champions, retrain
    what is due, promote through the gate, re-score, reload the online store.

    Idempotent and safe to schedule every few minutes (cron, Airflow, Kubernetes: see
    deploy/): a lock prevents overlapping runs (a second one exits 0 doing nothing), a run
    whose process died is resumed by the next, a run after which nothing changed does
    nothing. Runs and steps are recorded in cycle_runs / cycle_steps and MLflow. Exit 1 when
    a step fails (the previous champions and store keep serving).
    """
    from training.cycle import CycleBusyError, describe_runs, run_cycle

    if history:
        say(describe_runs())
        return
    try:
        result = run_cycle(progress=progress)
    except CycleBusyError as exc:
        say(f"cycle skipped: {exc}")
        return
    say(result.summary())
    if not result.ok:
        sys.exit(1)


@main.group()
def nba() -> None:
    """Next best action: off-policy evaluation and per-customer explanations."""


@nba.command("evaluate")
@click.option("--version", default=None, help="nba version (default: @challenger, else @champion).")
def nba_evaluate(version: str | None) -> None:
    """Policy-value table (IPS, SNIPS, DR with 95% bootstrap intervals) on the holdout.

    Rows: the candidate (greedy), the current champion, random over the allowed actions and
    each single action for everyone. Value = mean reward per decision = revenue x margin
    rate - the action's cost.
    """
    from training.nba import evaluate_nba

    say(evaluate_nba(version).summary())


@nba.command("explain")
@click.argument("customer_id")
@click.option(
    "--as-of", type=WHEN, default=None, help="Features as of this instant (default: end of data)."
)
def nba_explain(customer_id: str, as_of: datetime | None) -> None:
    """The champion policy's ranked actions for CUSTOMER_ID, with uplift, value, cost,
    weight and expected value, and why every other action is excluded."""
    from training.nba import explain_nba

    con = open_warehouse(get_settings(), read_only=True)
    say(explain_nba(con, customer_id, as_of).summary())


# --------------------------------------------------------------------------- scores, lists
@main.command()
@click.option("--as-of", type=WHEN, default=None, help="Score as of this instant (default: now).")
@click.option(
    "--chunk-rows", default=250_000, show_default=True, help="Customers scored per chunk."
)
def score(as_of: datetime | None, chunk_rows: int) -> None:
    """Score every known customer with the champions; append to the `scores` table.

    Churn probability, value with its interval, RFM segment, ABC tier and the best allowed
    action with its expected value, stamped with model versions, feature set and as-of.
    With RAPPORT_ENGINE=spark: features from the lake, the champions applied in the
    executors, scores to <lake>/scores/run_id=<run>/ as Parquet (--chunk-rows unused).
    """
    from training.scoring import score_all, score_on_spark

    settings = get_settings()
    spark = None
    if settings.engine == "spark":
        from features.spark import session

        spark = session(settings)  # before the warehouse: Spark takes a while to start
    con = open_warehouse(settings)
    try:
        if spark is not None:
            run = score_on_spark(con, spark, settings.lake, as_of, progress=progress)
        else:
            run = score_all(con, as_of, chunk_rows=chunk_rows, progress=progress)
    finally:
        con.disconnect()
    say(run.summary())


@main.command()
@click.option(
    "--share",
    type=click.FloatRange(0.0, 0.5),
    default=None,
    help="Set the share of customers held out of every action (0 to 0.5; default 0.05).",
)
@click.option(
    "--reshuffle", is_flag=True, help="Draw a new salt: a new, independent control group."
)
@click.option("--history", is_flag=True, help="Also print every recorded change.")
def control(share: float | None, reshuffle: bool, history: bool) -> None:
    """The always-on control group: customers who get no policy action on any path, so
    `rapport impact` can measure what the policy earns against them.

    Without options: the share, the salt and how many customers are in the group. With
    --share or --reshuffle: a recorded change (time, old and new values in the warehouse
    table `control_groups`) that batch scores, target lists and the service (within
    seconds) follow. Reshuffle rarely: each one starts a new comparison.
    """
    from features.tables.control import (
        change_control,
        control_history,
        control_path,
        count_members,
        read_control,
    )

    settings = get_settings()
    changing = share is not None or reshuffle
    if not changing and not settings.warehouse_path.exists():
        say(read_control(settings.home).describe())
        say("no warehouse yet: run `rapport ingest DIR` (or `rapport demo`) to count members")
        return
    con = open_warehouse(settings, read_only=not changing)
    try:
        from features.warehouse import raw

        db = raw(con)
        if changing:
            setting = change_control(db, settings.home, share, reshuffle)
            say(f"changed: {setting.describe()}; written to {control_path(settings.home)}")
            say("  recorded in the warehouse table `control_groups`; run `rapport score` so")
            say("  batch scores and target lists follow (the service follows by itself)")
        else:
            setting = read_control(settings.home)
            say(setting.describe())
        members, total = count_members(db, setting.group)
        share_seen = members / total if total else 0.0
        say(f"  {members:,} of {total:,} customers in the control group ({share_seen:.2%})")
        if history:
            changes = control_history(db)
            if changes.empty:
                say("  no recorded changes (the default share and salt)")
            for row in changes.itertuples():
                say(
                    f"  {row.changed_at:%Y-%m-%d %H:%M:%S} share {row.share:g}, "
                    f"salt {row.salt}: {row.change}"
                )
    finally:
        con.disconnect()


@main.command()
@click.option("--since", type=WHEN, default=None, help="Only decisions made at or after this date.")
@click.option(
    "--by",
    type=click.Choice(["action", "segment", "abc_tier", "list"]),
    default=None,
    help="Break treated vs control down by this (default: overall only).",
)
@click.option("--period", type=click.Choice(["month", "week"]), default="month", show_default=True)
def impact(since: datetime | None, by: str | None, period: str) -> None:
    """What the policy earned: treated customers against the always-on control group.

    Per period and overall: customers, conversion rate, revenue, margin and value per
    customer, the incremental value per customer with a 95% interval; per action the
    realised uplift against the predicted one; the off-policy estimate made when the NBA
    champion was trained against the realised value. Appended to the warehouse tables
    `impact` and `impact_actions`, logged to MLflow (experiment rapport-impact).
    """
    from training import impact as job

    settings = get_settings()
    open_warehouse(settings, read_only=True).disconnect()  # none yet: say what to run
    con = open_warehouse(settings)
    try:
        result = job.measure(con, since, by, period).record(con)
    finally:
        con.disconnect()
    say(result.summary())


# --------------------------------------------------------------------------- monitoring
@main.command()
@click.option("--as-of", default=None, help="Monitor as of this date (default: end of the data).")
@click.option(
    "--thresholds",
    type=FILE,
    default=None,
    help="Thresholds YAML (default: the shipped models/default_alerts.yaml).",
)
@click.option(
    "--report-dir",
    type=FOLDER,
    default=None,
    help="Folder of the HTML report (default: <home>/monitoring).",
)
def monitor(as_of: str | None, thresholds: Path | None, report_dir: Path | None) -> None:
    """Check the champions against what happened and their input against their training:
    churn and value realised (and estimated before labels), by tier and segment, feature
    and score drift. Prints the table, appends to `monitor_checks`, writes an HTML report,
    logs an MLflow run; exits 2 when any check is at alert level (for a scheduler to page).
    """
    from training import monitor as job

    con = open_warehouse(get_settings())
    try:
        result = job.run(
            parse_when(as_of),
            con=con,
            thresholds=thresholds,
            report_dir=report_dir,
            progress=progress,
        )
    finally:
        con.disconnect()
    say(result.summary())
    if len(result.alerts):
        sys.exit(2)


@main.command()
@click.option("--filter", "filter_", default=None, help='e.g. "churn_probability > 0.5".')
@click.option("--list", "list_name", default=None, help="A saved list definition by name.")
@click.option("--action", default=None, help="Action for everyone (default: best allowed).")
@click.option("--top", type=int, default=None, help="At most N customers.")
@click.option("--budget", type=float, default=None, help="Total cost allowed (exact knapsack).")
@click.option("--sort", default=None, help="COL or COL:asc (default: expected_value, desc).")
@click.option(
    "--profitable-only",
    is_flag=True,
    help="Drop customers whose expected value <= the action's cost (before the budget).",
)
@click.option("--out", type=FILE, default=None, help="Write the list to a .csv or .parquet file.")
@click.option(
    "--suppress",
    type=FILE,
    default=None,
    help="Extra opt-out ids (.csv/.parquet with customer_id, or one id per line).",
)
@click.option(
    "--lists", "lists_file", type=FILE, default=None, help="Extra saved list definitions (YAML)."
)
@click.option(
    "--as-of", type=WHEN, default=None, help="Consent and contact history as of (default: now)."
)
@click.option("--run", "run_id", default=None, help="Scoring run (default: the latest).")
@click.option("--show-lists", is_flag=True, help="Print the saved list definitions and exit.")
def targets(
    filter_: str | None,
    list_name: str | None,
    action: str | None,
    top: int | None,
    budget: float | None,
    sort: str | None,
    profitable_only: bool,
    out: Path | None,
    suppress: Path | None,
    lists_file: Path | None,
    as_of: datetime | None,
    run_id: str | None,
    show_lists: bool,
) -> None:
    """Select a target list from the latest scores and record it for audit.

    Consent for the action's channel, the contact policy, cool-downs, the suppression list
    and deduplication are always applied. With --budget, the customers maximising the
    total expected incremental value within the budget are chosen.

    With RAPPORT_ENGINE=spark: the latest run whose scores are in the lake, filter and
    policy in the executors, the exact budget on the driver over a shortlist.
    """
    from features.spec import default_spec
    from features.tables.control import read_control
    from features.tables.lists import (
        AuditTables,
        WarehouseLists,
        check_export,
        definition_texts,
        read_suppression_file,
    )
    from models.targeting import TargetDefinition, lookup, make_list, saved_definitions

    settings = get_settings()
    saved: dict[str, TargetDefinition] = {}
    if list_name is not None or show_lists:
        saved = saved_definitions(definition_texts(settings.target_lists_path, lists_file))
    if show_lists:
        for name, d in saved.items():
            say(f"{name}: {d.model_dump_json(exclude_none=True, exclude={'name'})}")
        return
    options = {"filter": filter_, "action": action, "top": top, "budget": budget}
    options |= {"sort": sort, "profitable_only": profitable_only or None}
    definition = lookup(list_name, options, saved)
    blocked = read_suppression_file(suppress) if suppress else set()
    if out is not None:
        check_export(out)
    source: Any = None
    select = None
    if settings.engine == "spark":
        from features.spark import LakeLists, session
        from training.spark_lists import select_on_spark

        spark = session(settings)  # before the warehouse: Spark takes a while to start
        select = select_on_spark
    con = open_warehouse(settings)
    try:
        source = WarehouseLists(con) if select is None else LakeLists(spark, settings.lake, con)
        target = make_list(
            source,
            definition,
            default_spec(),
            as_of or datetime.now(UTC),
            run_id=run_id,
            control=read_control(settings.home).group,
            suppress=blocked,
            sink=AuditTables(con, out),
            progress=progress,
            select=select,
        )
    finally:
        con.disconnect()
    say(target.summary())
    if out is None:
        shown = target.selection.members.head(10)
        if len(shown):
            say(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


# --------------------------------------------------------------------------- analytics
@main.command()
@click.option("--as-of", type=WHEN, default=None, help="End of the latest period (default: now).")
@click.option(
    "--period", type=click.Choice(["month", "quarter"]), default="month", show_default=True
)
@click.option(
    "--periods", type=int, default=None, help="Periods of history (default: 12 months, 8 quarters)."
)
@click.option("--steps", default=4, show_default=True, help="Periods the segment mix is projected.")
@click.option(
    "--wallet-quantile",
    default=0.9,
    show_default=True,
    help="Spending potential = this quantile of comparable customers' spend.",
)
@click.option("--no-mlflow", is_flag=True, help="Do not log the run to MLflow.")
def analytics(
    as_of: datetime | None,
    period: str,
    periods: int | None,
    steps: int,
    wallet_quantile: float,
    no_mlflow: bool,
) -> None:
    """Customer-base analytics from the latest scores: retention and cohorts, customer
    equity and its change, customer share, segment migration (Markov) and the segment map.

    Appends to the warehouse tables analytics_* (history kept), writes an HTML report under
    <home>/reports and logs it to MLflow.
    """
    from models.base_analytics import WalletSettings
    from training.analytics import run_analytics

    con = open_warehouse(get_settings())
    try:
        result = run_analytics(
            con,
            as_of,
            period=period,
            periods=periods,
            steps=steps,
            wallet=WalletSettings(quantile=wallet_quantile),
            log_to_mlflow=not no_mlflow,
            progress=progress,
        )
    finally:
        con.disconnect()
    say(result.summary())


# --------------------------------------------------------------------------- serving
def bundle_champions(settings: Settings | None = None) -> str | None:
    """Copy the @champion models into the BentoML model store (what a served or built
    Bento loads); None, with the reason on stderr, when they are not complete."""
    from models.bundle import refresh_bundle

    return _said_bundle(*refresh_bundle(settings or get_settings()))


def _said_bundle(tag: str | None, note: str) -> str | None:
    if tag is None:
        progress(f"champions not bundled for serving yet: {note}")
    else:
        say(f"champions bundled for serving as {tag}")
    return tag


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=3000, show_default=True, type=int)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Server processes (default: 1; one per core for throughput).",
)
def serve(host: str, port: int, workers: int | None) -> None:
    """Start the scoring service (BentoML): /score, /score_batch, /events, /feedback.

    Imports the @champion models from MLflow into the BentoML model store, then runs
    `bentoml serve serving.service:Rapport`. API keys: `rapport keys add`. Features come
    from the online store: `rapport materialize` first. OpenAPI at http://HOST:PORT/docs.json.
    """
    from serving.runtime import serve as run_server

    settings = get_settings()
    if bundle_champions(settings) is None:
        raise click.ClickException(
            "no champion models to serve: run `rapport demo` or `rapport train` + `rapport promote`"
        )
    say(f"serving on http://{host}:{port} (OpenAPI: http://{host}:{port}/docs.json; Ctrl+C stops)")
    sys.stdout.flush()
    run_server(host, port, workers, settings)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=3001, show_default=True, type=click.IntRange(1, 65535))
def ui(host: str, port: int) -> None:
    """Start the marketers' web page: overview, segments, list builder, lists, customer,
    results. Sign in with an API key with the `ui` or `targets` scope (`rapport keys add
    NAME --scopes ui`). It reads the warehouse read-only; saving a list writes it briefly.
    """
    from ui.server import serve as run_ui

    settings = get_settings()
    if not settings.warehouse_path.exists():
        raise click.ClickException(
            f"no warehouse at {settings.warehouse_path}: run `rapport demo` or `rapport ingest`"
        )
    say(f"web page on http://{host}:{port} (sign in with a `ui` or `targets` key; Ctrl+C stops)")
    sys.stdout.flush()
    run_ui(host, port, settings)


@main.command()
@click.option(
    "--as-of", type=WHEN, default=None, help="Load events before this instant (default: now)."
)
@click.option(
    "--segments", default=None, help="Stored segment model version (default: the current one)."
)
def materialize(as_of: datetime | None, segments: str | None) -> None:
    """Load the online feature store from the warehouse (every customer's record).

    The store is RAPPORT_ONLINE_STORE: a SQLite file in the workspace by default, or
    redis://host:port/db. It also gets the warehouse's segment model (stored by `rapport
    score` or `rapport features`). A running service picks the new load up within seconds.

    With RAPPORT_ENGINE=spark the records are built from the lake and written to Redis by
    the executors (RAPPORT_ONLINE_STORE must be redis://...); the outbox replay and the
    store's metadata follow as on DuckDB.
    """
    from features.online.materialize import load_online_store

    settings = get_settings()
    load = None
    if settings.engine == "spark":
        from features.spark import check_shared_store, record_loader, session

        check_shared_store(settings.online_store_url)  # before Spark takes its time to start
        load = record_loader(session(settings), settings.lake, settings.online_store_url)
    con = open_warehouse(settings, read_only=True)
    try:
        loaded = load_online_store(
            con, as_of, segments, progress=progress, settings=settings, load=load
        )
    finally:
        con.disconnect()
    say(
        f"{loaded.records:,} customer records in {loaded.seconds:.1f}s "
        f"({loaded.records / max(loaded.seconds, 1e-9):,.0f}/s) into {loaded.store}, "
        f"segments {loaded.segments}"
    )


@main.command()
@click.argument("customer_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts).")
def forget(customer_id: str, yes: bool) -> None:
    """Erase CUSTOMER_ID everywhere this workspace keeps them, on the person's request.

    The warehouse (every table with the customer's id, their decisions' outcomes, the
    quarantined rows naming them), the online store record, the outbox segments and the
    target-list downloads in <home>/exports. The erasure is recorded under a hash of the id
    (table `forgotten`), so every later ingest erases the customer again when a source
    still holds them. Not reached: files outside the workspace (your sources, lists
    exported with --out elsewhere), MLflow run artifacts, and models already trained.
    """
    from features.forget import forget as run_forget
    from features.lake import is_local, local_path
    from features.online.identifiers import IdentityIndex
    from features.online.store import open_store

    if not customer_id.strip():
        raise click.BadParameter("an empty customer id", param_hint="CUSTOMER_ID")
    if not yes:
        click.confirm(
            "Erase this customer's data from the warehouse, online store, outbox and list "
            "downloads? This cannot be undone",
            abort=True,
            err=True,
        )
    settings = get_settings()
    lake_folder = [local_path(settings.lake)] if is_local(settings.lake) else []
    con = open_warehouse(settings)
    store = open_store(settings.online_store_url)
    try:
        report = run_forget(
            con,
            store,
            customer_id,
            datetime.now(UTC),
            outbox=settings.outbox_dir,
            files=[settings.exports_dir, settings.score_snapshots_dir, *lake_folder],
            index=IdentityIndex.of(settings),
        )
    finally:
        store.close()
        con.disconnect()
    for line in report.lines():  # names the customer by a hash prefix only
        say(line)
    if report.open_lines:
        sys.exit(EXIT_RETRY_FORGET)


@main.command()
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, min_open=True),
    default=None,
    help="Evidence (bits: log2 of the Bayes factor of the identifiers compared) from which "
    "a probabilistic pair is one person (default 13).",
)
@click.option(
    "--compare-truth",
    is_flag=True,
    help="Also print precision, recall and F1 against the demo's truth_identity.",
)
def resolve(threshold: float | None, compare_truth: bool) -> None:
    """One person behind many customer records: exact rules on normalised e-mail, phone
    and loyalty card, then Splink for the rest (identity_links, identity_clusters,
    identity_changes). Phones without a country code are read in RAPPORT_PHONE_REGION.
    With RAPPORT_ENGINE=spark, Splink runs on Spark (the rest on the driver)."""
    from features.resolve import DEFAULT_THRESHOLD
    from features.resolve import resolve as run_resolve

    settings = get_settings()
    api = None
    if settings.engine == "spark":
        from features.spark import session, splink_api

        api = splink_api(session(settings))  # before the warehouse: Spark takes a while
    con = open_warehouse(settings)
    try:
        report = run_resolve(
            con,
            datetime.now(UTC),
            region=settings.phone_region,
            threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
            splink_api=api,
        )
        for line in report.lines():
            say(line)
        if compare_truth:
            from rapport.truth import compare_identity

            figures = compare_identity(con)
            if figures is None:
                say("no truth_identity in the warehouse (not a demo?)")
            else:
                say(
                    f"linkage against the truth: precision {figures['precision']:.3f}, "
                    f"recall {figures['recall']:.3f}, F1 {figures['f1']:.3f} "
                    f"({figures['linked_pairs']:,.0f} pairs linked, "
                    f"{figures['true_pairs']:,.0f} true)"
                )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        con.disconnect()


@main.group()
def keys() -> None:
    """API keys of the scoring service (stored hashed in <home>/api_keys)."""


@keys.command("add")
@click.argument("name")
@click.option(
    "--scopes",
    type=Scopes(),
    default="score",
    show_default=True,
    help="Comma-separated: score, events, feedback, targets, ui, admin (admin = all, plus as_of).",
)
def keys_add(name: str, scopes: list[str]) -> None:
    """Create a key for NAME (an app, a team); prints the key once: only its hash is kept.

    A running service picks the new key up within seconds. RAPPORT_API_KEYS takes
    entries too (the `entry` line printed here) for deployments without a workspace file.
    """
    from serving.auth import add_key, hash_key, key_file

    settings = get_settings()
    settings.ensure_home()
    plain = add_key(settings.home, scopes, name=name)
    say(plain)
    progress(f"key for {name!r} ({', '.join(scopes)}) added to {key_file(settings.home)}")
    progress(f"entry: {hash_key(plain)}:{'+'.join(scopes)}; shown once, store it safely")


@keys.command("list")
def keys_list() -> None:
    """Names, hash prefixes and scopes of the workspace's keys (never the keys)."""
    from serving.auth import list_keys

    entries = list_keys(get_settings().home)
    for name, digest, scopes in entries:
        say(f"{digest}…  {'+'.join(sorted(scopes)):<32} {name}")
    if not entries:
        say("no keys: create one with `rapport keys add NAME --scopes score`")


@main.command()
@click.option(
    "--days",
    type=click.IntRange(1, 365),
    required=True,
    help="Length of the period to play, ending at --as-of.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the customers' draws.")
@click.option("--as-of", type=WHEN, default=None, help="End of the period (default: now).")
def simulate(days: int, seed: int, as_of: datetime | None) -> None:
    """Play the demo customers' responses to the decisions actually made (demo data only).

    Reads the decisions of the warehouse, the outbox and the recorded target lists; writes
    orders, interactions and outcomes as contract files under <home>/simulate/ (load them
    with `rapport ingest FOLDER`) and the period's true incremental value beside them.
    """
    from rapport.simulate import simulate as run_simulate

    settings = get_settings()
    con = open_warehouse(settings, read_only=True)
    try:
        result = run_simulate(
            con, settings.home, settings.outbox_dir, days, as_of or datetime.now(UTC), seed
        )
    finally:
        con.disconnect()
    say(result.summary())


@main.command()
@click.option("--customers", "-n", default=20_000, show_default=True, help="Customers to simulate.")
@click.option("--seed", default=42, show_default=True)
@click.option(
    "--serve/--no-serve",
    default=True,
    show_default=True,
    help="End by starting the scoring service (Ctrl+C stops it).",
)
@click.option("--port", default=3000, show_default=True, type=int, help="Port of the service.")
@click.option("--ui-port", default=3001, show_default=True, type=int, help="Port of the web page.")
@click.option(
    "--periods",
    default=DEFAULT_PERIODS,
    show_default=True,
    type=click.IntRange(1, 24),
    help="Simulated 30-day periods to play after the batch part; with more than one, each "
    "ends with `rapport cycle` and the demo prints the trajectory (1: one period, no cycle).",
)
def demo(**options: Any) -> None:
    """Run the whole loop on generated demo data (the README's first command).

    Data, ingest, features, training, promotion, the online store, then (unless
    --no-serve) the scoring service on http://127.0.0.1:PORT with a local API key and
    the web page for marketers beside it on http://127.0.0.1:UI-PORT.
    """
    from rapport.demo import DemoOptions, run_demo

    # the options are named as DemoOptions' fields: one list of what the demo takes
    run_demo(DemoOptions(**options), get_settings(), say, progress)


if __name__ == "__main__":
    main()
