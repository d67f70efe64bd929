"""The one place where Rapport's configuration lives.

Everything is read from the environment (prefix ``RAPPORT_``) or a ``.env`` file when
:func:`get_settings` is called; importing this module does nothing else. Paths that are
not given explicitly are derived from the workspace folder ``RAPPORT_HOME``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Typed, frozen configuration; derived paths are properties so they follow ``home``."""

    model_config = SettingsConfigDict(
        env_prefix="RAPPORT_", env_file=".env", extra="ignore", frozen=True
    )

    home: Path = Field(default=Path(".rapport"), description="Workspace folder.")
    warehouse_url: str | None = Field(
        default=None, description="DuckDB file path (default: <home>/warehouse.duckdb)."
    )
    online_store: str | None = Field(
        default=None,
        description="sqlite:///path or redis://host:port/db (default: SQLite file in <home>).",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias="MLFLOW_TRACKING_URI",
        description="MLflow tracking store (default: SQLite under <home>/mlruns).",
    )
    optuna_storage: str | None = Field(
        default=None, description="Optuna study storage (default: SQLite under <home>)."
    )
    horizon_days: int = Field(default=90, ge=1, le=730)
    seed: int = 42
    api_keys: str | None = Field(
        default=None,
        description="Comma-separated 'sha256hex:scope1+scope2' entries for the HTTP service.",
    )
    max_batch_size: int = Field(default=500, ge=1)
    score_microbatch: int = Field(
        default=16,
        ge=1,
        le=64,
        description="Most concurrent /score requests of a worker scored together (one "
        "prediction per booster for all of them); 1 scores each request alone.",
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1_000)
    promotion_margin: float = Field(default=0.0, ge=0.0)
    cycle_retrain_days: float = Field(
        default=30.0,
        ge=0,
        description="`rapport cycle` retrains a kind whose champion is older than this "
        "(days) once the data has changed; alerts retrain it sooner.",
    )
    cycle_rollback_margin: float = Field(
        default=0.02,
        ge=0,
        description="`rapport cycle` rolls a churn/value champion back when @previous beats "
        "it by more than this on labels that matured after its promotion.",
    )
    decision_group_seconds: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="How long the service collects logged decisions before writing a group.",
    )
    feature_sample_share: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Share of live feature vectors the service samples to the outbox for the "
        "monitor's live/batch skew check (decided by a hash of the decision id; 0 disables).",
    )
    score_feature_runs: int = Field(
        default=12,
        ge=1,
        description="`rapport score` keeps the feature sample (`score_features`, what "
        "`rapport monitor` checks for drift) of this many latest scoring runs and prunes "
        "older ones as it writes a new run's.",
    )
    warehouse_wait_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a CLI command waits for the warehouse another process holds.",
    )
    batch_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="CPU niceness the CLI's batch commands (score, ingest, features, train, "
        "cycle, materialize, ...) add to their process, so a service on the same machine "
        "keeps its latency while they run; 0 leaves their priority alone.",
    )
    max_quarantine_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="`rapport ingest` exits 3 when a source has more than this share of its "
        "rows quarantined (or all of them).",
    )
    reload_seconds: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="How often the service checks for new champions and a reloaded online "
        "store (it swaps them in without a restart).",
    )
    export_ttl_hours: float = Field(
        default=24.0, gt=0, description="How long target lists made over HTTP stay downloadable."
    )
    phone_region: str = Field(
        default="GB",
        min_length=2,
        max_length=2,
        description="Region (ISO 3166 code) of phone numbers written without a country code; "
        "identity resolution writes every number in E.164.",
    )

    engine: Literal["duckdb", "spark"] = Field(
        default="duckdb",
        description="Where `rapport ingest`, `resolve` (Splink), `features`, `train`, `score`, "
        "`targets` and `materialize` run: `duckdb` (one machine) or `spark` (over Parquet in "
        "the lake, RAPPORT_LAKE_URI).",
    )
    spark_master: str = Field(
        default="local[*]",
        min_length=1,
        description="Spark master: `local[*]`, `local[2]`, `spark://host:7077`, `yarn`, ...",
    )
    spark_conf: str | None = Field(
        default=None,
        description="Extra Spark settings, `spark.k=v,spark.k2=v2` or a JSON object; every "
        "key starts with `spark.`.",
    )
    train_max_rows: int = Field(
        default=2_000_000,
        ge=1_000,
        description="With the Spark engine, training sets of more rows are sampled down to "
        "about this many (stratified, each row weighted by its inverse inclusion probability).",
    )
    lake_uri: str | None = Field(
        default=None,
        description="The lake (Parquet): a folder or an object-store URI such as "
        "s3a://bucket/rapport (default: <home>/lake).",
    )

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("spark_conf", mode="after")
    @classmethod
    def _spark_conf_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_spark_conf(value)
        return value

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def warehouse_path(self) -> Path:
        if self.warehouse_url:
            return Path(self.warehouse_url.removeprefix("duckdb://")).expanduser().absolute()
        return self.home / "warehouse.duckdb"

    @property
    def online_store_url(self) -> str:
        return self.online_store or f"sqlite:///{self.home / 'online.sqlite'}"

    @property
    def target_lists_path(self) -> Path:
        """The workspace's saved target list definitions (beside the packaged examples)."""
        return self.home / "target_lists.yaml"

    @property
    def mlruns_dir(self) -> Path:
        return self.home / "mlruns"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlruns_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return (self.mlruns_dir / "artifacts").as_uri()

    @property
    def optuna_storage_url(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.home / 'optuna.db'}"

    @property
    def outbox_dir(self) -> Path:
        """Events accepted by the service, waiting for ``rapport ingest``."""
        return self.home / "outbox"

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    @property
    def identity_key_path(self) -> Path:
        """The secret key of the identifier hashes in the online store's index (created on
        first use, :func:`features.identity.identity_key`); keep it with the store."""
        return self.home / "identity.key"

    @property
    def score_snapshots_dir(self) -> Path:
        """Each finished scoring run, published as immutable files the service reads
        while the warehouse is locked (:mod:`features.tables.snapshots`)."""
        return self.home / "snapshots" / "scores"

    @property
    def reports_dir(self) -> Path:
        """HTML reports written outside MLflow (customer-base analytics)."""
        return self.home / "reports"

    @property
    def lake(self) -> str:
        """The lake's root: a URI (``s3a://...``, ``file:///...``) as given, else a local
        absolute path (default ``<home>/lake``)."""
        if not self.lake_uri:
            return str(self.home / "lake")
        if "://" in self.lake_uri:
            return self.lake_uri.rstrip("/")
        return str(Path(self.lake_uri).expanduser().absolute())

    @property
    def spark_options(self) -> dict[str, str]:
        """RAPPORT_SPARK_CONF parsed (checked when the settings were read)."""
        return parse_spark_conf(self.spark_conf) if self.spark_conf else {}

    def ensure_home(self) -> Path:
        """Create the workspace folders on first use (never at import time)."""
        for folder in (self.home, self.mlruns_dir, self.outbox_dir, self.exports_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self.home


def parse_spark_conf(text: str) -> dict[str, str]:
    """``spark.a=1,spark.b=x`` or ``{"spark.a": "1"}`` to a mapping; ValueError says which
    entry is wrong (not ``k=v``, a key outside ``spark.*``, JSON that is not an object)."""
    text = text.strip()
    if not text:
        return {}
    pairs: dict[str, str] = {}
    if text.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"RAPPORT_SPARK_CONF is not valid JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise ValueError("RAPPORT_SPARK_CONF as JSON must be an object of spark.* keys")
        pairs = {str(k).strip(): str(v) for k, v in data.items()}
    else:
        for entry in text.split(","):
            key, sep, value = entry.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ValueError(
                    f"RAPPORT_SPARK_CONF entry {entry.strip()!r} is not key=value "
                    "(expected spark.k=v,spark.k2=v2 or a JSON object)"
                )
            pairs[key.strip()] = value.strip()
    wrong = [k for k in pairs if not k.startswith("spark.") or k == "spark."]
    if wrong:
        raise ValueError(
            f"RAPPORT_SPARK_CONF keys must start with 'spark.': {', '.join(sorted(wrong))}"
        )
    return pairs


@cache
def get_settings() -> Settings:
    """Settings read once per process; tests call ``get_settings.cache_clear()``."""
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (after changing the environment)."""
    get_settings.cache_clear()
