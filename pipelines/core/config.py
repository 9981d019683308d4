"""Layered YAML configuration: conf/base, then conf/<env>, then --set overrides, validated into typed objects.

Every error names the dotted key and the file (or `--set`) that gave it, so a user can fix it without reading code.
Values may reference environment variables as ${VAR} or ${VAR:-default}; secrets are read that way, never stored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVS = ("local", "standalone", "yarn")
DEFAULT_PIPELINE = "flights"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^${}]*))?\}")  # innermost reference


class ConfigError(ValueError):
    """A configuration problem; the message names the key and where it was set."""


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SparkConf(Strict):
    app_name: str = "spark-ml-pipeline"
    master: str = "local[2]"
    deploy_mode: Literal["client", "cluster"] = "client"
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    conf: dict[str, str] = Field(default_factory=dict)
    # Executor resources, used by spark-submit.sh for cluster environments.
    driver_memory: str = "2g"
    executor_memory: str = "2g"
    executor_cores: int = 1
    num_executors: int | None = None
    queue: str | None = None
    packages: list[str] = Field(default_factory=list)
    jars: list[str] = Field(default_factory=list)
    # yarn: prefix of the Python 3.11 installation on the cluster nodes that the packed venv links to.
    python_prefix: str | None = None

    @field_validator("conf", mode="before")
    @classmethod
    def _conf_as_strings(cls, v: Any) -> Any:
        """Spark conf values are strings; YAML numbers and booleans are written as Spark expects them."""
        if isinstance(v, dict):
            return {k: str(x).lower() if isinstance(x, bool) else str(x) for k, x in v.items()}
        return v


class StorageConf(Strict):
    workspace: str = "${PIPELINE_HOME:-./workspace}"
    engine: Literal["auto", "delta-spark", "embedded"] = "auto"
    max_records_per_file: int = Field(default=2_000_000, gt=0)


class MlflowConf(Strict):
    tracking_uri: str | None = None  # default: sqlite:///<workspace>/mlflow.db
    artifact_root: str | None = None  # default: <workspace>/mlartifacts
    experiment: str = "spark-ml-pipeline"
    registered_model: str = "flight-delay"


class DemoConf(Strict):
    fraction: float = Field(default=1.0, gt=0, le=1)
    seed: int = 7
    datasets: list[Literal["flights", "digits", "tweets"]] = Field(default_factory=list)  # empty = all


class SourceConf(Strict):
    """One landing source: where its files are, how to parse them, which bronze table they feed.

    csv and jsonl are parsed line by line against the declared `columns`; image reads files with Spark's
    binaryFile source (recursive, `glob_filter`), decodes them to check they are images, and takes the label from
    the parent folder's name.
    """

    path: str  # glob relative to the landing zone (csv, jsonl: files; image: a folder searched recursively)
    format: Literal["csv", "jsonl", "image"] = "csv"
    delimiter: str = ","
    header: bool = True
    null_values: list[str] = Field(default_factory=lambda: ["", "NA"])
    timestamp_format: str = "ISO8601"  # pandas/strptime format, or ISO8601
    columns: dict[str, str] = Field(default_factory=dict)  # ordered name -> Spark SQL type (csv, jsonl)
    partition_by: list[str] = Field(default_factory=list)
    table: str
    glob_filter: str = "*"  # image: file names to read; others in the folder are counted as ignored
    label_from_folder: bool = True  # image: label = name of the folder holding the file

    @field_validator("columns")
    @classmethod
    def _known_types(cls, v: dict[str, str]) -> dict[str, str]:
        allowed = {"string", "int", "bigint", "double", "float", "boolean", "date", "timestamp"}
        bad = {k: t for k, t in v.items() if t not in allowed}
        if bad:
            raise ValueError(f"unsupported column types {bad}; allowed: {sorted(allowed)}")
        return v

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str) -> str:
        if len(v) != 1:
            raise ValueError("delimiter must be exactly one character")
        return v

    @model_validator(mode="after")
    def _columns_for_text(self) -> SourceConf:
        if self.format in ("csv", "jsonl") and not self.columns:
            raise ValueError(f"columns: a {self.format} source needs at least one declared column")
        return self


class IngestConf(Strict):
    sources: dict[str, SourceConf]
    sniff_bytes: int = Field(default=65536, gt=0)
    select: list[str] = Field(default_factory=list)  # sources a run ingests by default; empty = all

    @field_validator("select")
    @classmethod
    def _known_sources(cls, v: list[str], info: Any) -> list[str]:
        unknown = sorted(set(v) - set(info.data.get("sources", {})))
        if unknown:
            raise ValueError(f"unknown sources {unknown}; configured: {sorted(info.data.get('sources', {}))}")
        return v


# ---- features section (issue 3: features job) --------------------------------------------------------------------
class LabelConf(Strict):
    """Binary label: 1 when `column` > `threshold`, 0 otherwise, null when `column` is null (no outcome)."""

    column: str = "arr_delay"
    threshold: float = 15.0
    name: str = "label"


class SplitConf(Strict):
    """Deterministic split by the month of the row's date; months listed nowhere get split 'excluded'."""

    train: list[int] = Field(default_factory=lambda: list(range(1, 10)))
    validation: list[int] = Field(default_factory=lambda: [10, 11])
    test: list[int] = Field(default_factory=lambda: [12])

    @field_validator("train", "validation", "test")
    @classmethod
    def _months(cls, v: list[int]) -> list[int]:
        bad = [m for m in v if not 1 <= m <= 12]
        if bad:
            raise ValueError(f"months must be 1..12, got {bad}")
        return v

    @field_validator("test")
    @classmethod
    def _disjoint(cls, v: list[int], info: Any) -> list[int]:
        seen: dict[int, str] = {}
        for name in ("train", "validation"):
            for m in info.data.get(name, []):
                seen.setdefault(m, name)
        for m in v:
            seen.setdefault(m, "test")
        lists = {"train": info.data.get("train", []), "validation": info.data.get("validation", []),
                 "test": v}
        overlap = sorted({m for name, ms in lists.items() for m in ms if seen[m] != name})
        if overlap:
            raise ValueError(f"months {overlap} are in more than one split")
        if not info.data.get("train"):
            raise ValueError("the train split needs at least one month")
        return v


class JoinConf(Strict):
    """A left join of a dimension table (bronze) onto the fact rows; the dimension must be unique on `keys`."""

    table: str
    keys: list[str]  # join key columns, same name on both sides
    columns: dict[str, str]  # dimension column -> output column name
    on_duplicates: Literal["dedupe", "fail"] = "dedupe"  # dedupe: keep one row per key (deterministic), log


class NumericGroup(Strict):
    """Numeric columns: imputed (strategy fitted on train), then assembled and scaled."""

    kind: Literal["numeric"]
    name: str = "numeric"
    columns: list[str]
    impute: Literal["mean", "median", "mode"] = "median"


class CategoricalGroup(Strict):
    """String columns: StringIndexer(handleInvalid=keep: unseen values and nulls get a slot) + one-hot."""

    kind: Literal["categorical"]
    name: str = "categorical"
    columns: list[str]
    order: Literal["frequencyDesc", "frequencyAsc", "alphabetDesc", "alphabetAsc"] = "frequencyDesc"


class BucketizedGroup(Strict):
    """Numeric columns cut into quantile buckets (boundaries fitted on train), one-hot when `one_hot`."""

    kind: Literal["bucketized"]
    name: str = "bucketized"
    columns: list[str]
    buckets: int = Field(default=10, ge=2)
    one_hot: bool = True


class CyclicalGroup(Strict):
    """Periodic columns (hour, weekday, month, wind direction) -> sin/cos pairs; column -> period."""

    kind: Literal["cyclical"]
    name: str = "cyclical"
    columns: dict[str, float]

    @field_validator("columns")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {c: p for c, p in v.items() if p <= 0}
        if bad:
            raise ValueError(f"periods must be > 0, got {bad}")
        return v


FeatureGroup = NumericGroup | CategoricalGroup | BucketizedGroup | CyclicalGroup
GROUP_KINDS: dict[str, type[Strict]] = {
    "numeric": NumericGroup, "categorical": CategoricalGroup, "bucketized": BucketizedGroup,
    "cyclical": CyclicalGroup,
}


class SelectorConf(Strict):
    """Optional UnivariateFeatureSelector after scaling (continuous features vs categorical label)."""

    enabled: bool = False
    mode: Literal["numTopFeatures", "percentile", "fpr", "fdr", "fwe"] = "fpr"
    threshold: float = 0.05


class StatsConf(Strict):
    """Descriptive statistics of the training split, logged to MLflow."""

    enabled: bool = True
    histogram_bins: int = Field(default=30, ge=2)
    spearman: bool = True
    spearman_max_rows: int = Field(default=50_000, ge=100)  # Spearman sorts every column: sample above this
    seed: int = 7
    max_plot_columns: int = Field(default=12, ge=1)


class FeaturesConf(Strict):
    """Feature-table build: which bronze tables, how to clean/join/split them, and the feature groups by kind.

    `groups` is a list of typed groups (numeric, categorical, bucketized, cyclical); later featurizers (text,
    image) are new kinds. `pipeline` names the recipe so runs and tables can be told apart.
    """

    pipeline: str = "tabular-v1"
    source_table: str = "flights"  # bronze fact table
    output_table: str = "flight_features"  # silver
    bronze_versions: dict[str, int] = Field(default_factory=dict)  # table -> pinned version; unset = latest
    key: list[str] = Field(default_factory=list)  # natural key: duplicates on it are removed and counted
    date_columns: list[str] = Field(default_factory=lambda: ["year", "month", "day"])  # -> date column
    date_name: str = "flight_date"
    label: LabelConf = LabelConf()
    split: SplitConf = SplitConf()
    joins: list[JoinConf] = Field(default_factory=list)
    derived: dict[str, str] = Field(default_factory=dict)  # name -> Spark SQL expression, after the joins
    post_departure: list[str] = Field(default_factory=list)  # unknown at prediction time: never inputs
    groups: list[FeatureGroup] = Field(default_factory=list)
    passthrough: list[str] = Field(default_factory=list)  # extra columns copied to the table, never inputs
    scale: bool = True
    selector: SelectorConf = SelectorConf()
    stats: StatsConf = StatsConf()
    model_dir: str | None = None  # default: <workspace>/models/preprocessing

    @field_validator("bronze_versions")
    @classmethod
    def _versions(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {t: n for t, n in v.items() if n < 0}
        if bad:
            raise ValueError(f"table versions are >= 0, got {bad}")
        return v

    @field_validator("date_columns")
    @classmethod
    def _ymd(cls, v: list[str]) -> list[str]:
        if len(v) != 3:
            raise ValueError("date_columns names the year, month and day columns (3 names)")
        return v

    @field_validator("groups", mode="before")
    @classmethod
    def _by_kind(cls, v: Any) -> Any:
        """Validate each group with the model of its `kind`, so errors name the kind's own fields."""
        if not isinstance(v, list):
            return v
        out = []
        for i, g in enumerate(v):
            if not isinstance(g, dict):
                out.append(g)
                continue
            kind = g.get("kind")
            if kind not in GROUP_KINDS:
                raise ValueError(f"group {i}: unknown kind {kind!r}; kinds are {sorted(GROUP_KINDS)}")
            try:
                out.append(GROUP_KINDS[kind].model_validate(g))
            except ValidationError as e:
                msgs = "; ".join(f"{'.'.join(map(str, x['loc'])) or kind}: {x['msg']}" for x in e.errors())
                raise ValueError(f"group {i} ({kind}): {msgs}") from None
        return out

    @field_validator("groups")
    @classmethod
    def _no_leakage(cls, v: list[FeatureGroup], info: Any) -> list[FeatureGroup]:
        """A feature input must be known at prediction time: post-departure columns are refused here."""
        banned = set(info.data.get("post_departure", []))
        if "label" in info.data:
            banned.add(info.data["label"].column)
        derived = info.data.get("derived", {})
        leaks = []
        for g in v:
            for c in g.columns:
                if c in banned:
                    leaks.append(c)
                elif c in derived and any(re.search(rf"\b{re.escape(b)}\b", derived[c]) for b in banned):
                    leaks.append(f"{c} (= {derived[c]})")
        if leaks:
            raise ValueError(f"feature inputs not known at prediction time: {leaks}")
        return v


# ---- training section (issue 4: train job) ------------------------------------------------------------------------
class MlpConf(Strict):
    """Fully connected network over the feature vector: Dense(units, activation) [+ BatchNorm] + Dropout per layer."""

    hidden_units: list[int] = Field(default_factory=lambda: [64])
    activation: Literal["relu", "elu", "selu", "gelu", "tanh"] = "relu"
    dropout: float = Field(default=0.3, ge=0, lt=1)
    batch_norm: bool = False

    @field_validator("hidden_units")
    @classmethod
    def _units(cls, v: list[int]) -> list[int]:
        if not v or any(u < 1 for u in v):
            raise ValueError("hidden_units: at least one layer, each with >= 1 unit")
        return v


class CnnConf(Strict):
    """Image CNN: per block Conv2D(filters, kernel, same) + ReLU + MaxPool(2); then Dense(dense_units) + Dropout."""

    filters: list[int] = Field(default_factory=lambda: [16, 32])
    kernel_size: int = Field(default=3, ge=1)
    dense_units: int = Field(default=64, ge=1)
    dropout: float = Field(default=0.25, ge=0, lt=1)

    @field_validator("filters")
    @classmethod
    def _filters(cls, v: list[int]) -> list[int]:
        if not v or any(f < 1 for f in v):
            raise ValueError("filters: at least one conv block, each with >= 1 filter")
        return v


class NetworkConf(Strict):
    """The network: `kind` picks the builder and each kind has its own section (cnn needs an image input)."""

    kind: Literal["mlp", "cnn"] = "mlp"
    mlp: MlpConf = MlpConf()
    cnn: CnnConf = CnnConf()


class OptimizerConf(Strict):
    """Optimizer; `learning_rate` is per worker and multiplied by the number of workers when `scale_by_workers`."""

    name: Literal["adam", "sgd"] = "adam"
    learning_rate: float = Field(default=0.00025, gt=0)
    scale_by_workers: bool = True
    warmup_epochs: int = Field(default=2, ge=0)  # gradual warm-up from lr to lr * workers (Horovod)
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd only


class EarlyStoppingConf(Strict):
    """Stop when the validation metric has not improved by `min_delta` for `patience` epochs."""

    monitor: Literal["val_auc", "val_loss", "val_pr_auc", "val_accuracy"] = "val_auc"  # multiclass: no auc
    patience: int = Field(default=3, ge=1)
    min_delta: float = Field(default=0.0001, ge=0)


class TrainDataConf(Strict):
    """Which feature table version to train on (through its features run) and how Petastorm feeds it."""

    features_run_id: str | None = None  # default: the latest finished features run for features.output_table
    sample_fraction: float = Field(default=1.0, gt=0, le=1)  # per split, seeded: smoke runs and tests
    files_per_worker: int = Field(default=4, ge=1)  # Parquet files in the Petastorm cache per worker
    reader_threads: int = Field(default=2, ge=1)  # Petastorm reader pool per worker
    shuffle_buffer: int = Field(default=10000, ge=0)  # rows; 0 = no in-memory shuffle


class HorovodConf(Strict):
    """Gloo rendezvous on the driver; None = 127.0.0.1 / loopback in local mode, the driver host otherwise."""

    rendezvous_host: str | None = None
    iface: str | None = None  # network interface for gloo; None = lo locally, else the one holding the task's IP
    gloo_timeout_s: int = Field(default=120, gt=0)  # HOROVOD_GLOO_TIMEOUT_SECONDS: rendezvous and connect


class BaselineConf(Strict):
    """MLlib baseline on the same features, tuned with TrainValidationSplit, logged as a nested run."""

    enabled: bool = True
    kind: Literal["logreg", "gbt"] = "logreg"
    reg_params: list[float] = Field(default_factory=lambda: [0.0, 0.01])  # logreg
    elastic_net_params: list[float] = Field(default_factory=lambda: [0.0, 0.5])  # logreg
    max_depths: list[int] = Field(default_factory=lambda: [3, 5])  # gbt
    max_iter: int = Field(default=50, ge=1)
    train_ratio: float = Field(default=0.8, gt=0, lt=1)
    parallelism: int = Field(default=2, ge=1)


class FaultConf(Strict):
    """Test-only fault injection: rank `fail_rank` fails at the start of epoch `fail_epoch` (None = off)."""

    fail_rank: int | None = None
    fail_epoch: int = Field(default=1, ge=0)
    only_first_attempt: bool = True  # the retried attempt runs clean
    mode: Literal["raise", "exit"] = "raise"  # exit: the process dies without a Python traceback


class TrainingConf(Strict):
    """Distributed training: N workers in one Spark barrier stage (Horovod over gloo, or TF MultiWorkerMirrored).

    `batch_size` is per worker. The barrier stage is retried by Spark (spark.stage.maxConsecutiveAttempts) up to
    `max_attempts` times; a retry continues from the latest checkpoint. `timeout_s` bounds all attempts together.
    """

    backend: Literal["horovod", "tf-mwms"] = "horovod"
    num_workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)  # TensorFlow intra/inter-op threads per worker
    gpus_per_worker: int = Field(default=0, ge=0)  # > 0: stage-level GPU request, CUDA_VISIBLE_DEVICES per task
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=256, ge=1)
    max_steps_per_epoch: int | None = Field(default=None, ge=1)  # cap (smoke runs, benchmarks)
    seed: int = 7
    class_weights: bool = True  # weight classes by inverse frequency on the train split
    max_attempts: int = Field(default=3, ge=1)
    timeout_s: int = Field(default=3600, gt=0)
    checkpoint_dir: str | None = None  # default: <workspace>/checkpoints; one folder per MLflow run
    keep_checkpoints: int = Field(default=3, ge=1)
    promote_metric: Literal["roc_auc", "pr_auc", "accuracy", "macro_f1"] = "roc_auc"  # test metric: champion
    data: TrainDataConf = TrainDataConf()
    network: NetworkConf = NetworkConf()
    optimizer: OptimizerConf = OptimizerConf()
    early_stopping: EarlyStoppingConf = EarlyStoppingConf()
    horovod: HorovodConf = HorovodConf()
    baseline: BaselineConf = BaselineConf()
    fault: FaultConf = FaultConf()

    @field_validator("fault")
    @classmethod
    def _fault_rank(cls, v: FaultConf, info: Any) -> FaultConf:
        n = info.data.get("num_workers", 1)
        if v.fail_rank is not None and not 0 <= v.fail_rank < n:
            raise ValueError(f"fail_rank must be a rank 0..{n - 1} (num_workers={n}), got {v.fail_rank}")
        return v


# ---- scoring and monitoring sections (issue 5: score, monitor jobs) --------------------------------------------
class ScoringConf(Strict):
    """Batch scoring: which registered model (alias or version), how spark_udf runs it, where predictions go."""

    model_alias: str = "champion"
    model_version: int | None = None  # when set, wins over the alias
    env_manager: Literal["local", "virtualenv", "uv"] = "local"  # virtualenv/uv: clusters without the stack
    table: str = "predictions"  # gold/<table>, partitioned by the date column
    stream_path: str = "flights/*.csv"  # landing glob the streaming variant watches (files of the source table)
    stream_checkpoint: str | None = None  # default <workspace>/checkpoints/stream-score
    stream_max_files_per_trigger: int = Field(default=10, gt=0)
    stream_trigger_seconds: int = Field(default=60, gt=0)  # processingTime trigger of the streaming variant


class MonitorConf(Strict):
    """Drift between the scored batch and the training split; alert (exit 4) when a threshold is crossed."""

    table: str = "drift"  # gold/<table>
    psi_threshold: float = Field(default=0.25, gt=0)
    ks_threshold: float = Field(default=0.3, gt=0, le=1)
    prediction_psi_threshold: float = Field(default=0.25, gt=0)
    bins: int = Field(default=10, ge=2)
    reference_sample_rows: int = Field(default=200_000, gt=0)  # training rows sampled as the reference
    features: list[str] | None = None  # default: every numeric and categorical input of the features config


# ---- image and text flows (issue 6) --------------------------------------------------------------------------
class HashSplitConf(Strict):
    """Deterministic split by a hash of the row key: a row keeps its split across runs and data versions."""

    validation: float = Field(default=0.15, ge=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 7
    key_segments: int = Field(default=0, ge=0)  # > 0: hash only the key's last N '/'-separated parts (paths)

    @model_validator(mode="after")
    def _room_for_train(self) -> HashSplitConf:
        if self.validation + self.test >= 1:
            raise ValueError("validation + test must leave rows for train (sum < 1)")
        return self


class ClassLabelConf(Strict):
    """Multiclass label from a string column: `classes` in order (index = class id); values outside them go to
    class `other` when set, else the row is excluded (and counted). classes None = every value, sorted."""

    column: str
    classes: list[str] | None = None
    other: str | None = None


class ImageFlowConf(Strict):
    """Image featurization: bytes -> decoded, resized, normalized (height, width, channels) float array."""

    key: str = "path"
    content_column: str = "content"
    label_column: str = "label"  # the bronze label (folder name); its distinct values, sorted, are the classes
    height: int = Field(default=8, ge=1)
    width: int = Field(default=8, ge=1)
    channels: Literal[1, 3] = 1
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    normalize: bool = True
    split: HashSplitConf = HashSplitConf()
    grid_per_class: int = Field(default=8, ge=1)  # images per class in the sample grid PNG


class TextFlowConf(Strict):
    """Text featurization as pyspark.ml stages: clean -> RegexTokenizer -> StopWordsRemover -> NGram ->
    HashingTF + IDF (tokens and n-grams) and Word2Vec -> one vector. A size of 0 turns a branch off."""

    key: str = "id_str"
    text_column: str = "text"
    label: ClassLabelConf = ClassLabelConf(column="source")
    split: HashSplitConf = HashSplitConf()
    strip_urls: bool = True  # URLs -> the token "url" (they say "a link", not which one)
    token_pattern: str = "[^\\w#@']+"  # RegexTokenizer gaps pattern: hashtags, mentions and apostrophes stay
    min_token_length: int = Field(default=2, ge=1)
    stop_words: bool = True
    extra_stop_words: list[str] = Field(default_factory=list)
    ngram: int = Field(default=2, ge=0)  # 0 = no n-gram branch
    num_features: int = Field(default=4096, ge=0)  # HashingTF size of each branch (tokens, n-grams); 0 = off
    idf_min_doc_freq: int = Field(default=2, ge=0)
    word2vec_size: int = Field(default=50, ge=0)  # 0 = no Word2Vec branch
    word2vec_min_count: int = Field(default=5, ge=1)
    word2vec_max_iter: int = Field(default=1, ge=1)
    seed: int = 7


class Config(Strict):
    env: Literal["local", "standalone", "yarn"] = "local"
    pipeline: str = DEFAULT_PIPELINE  # a profile in conf/pipelines/<name>/ (flights needs none: base is flights)
    flow: Literal["tabular", "image", "text"] = "tabular"  # which featurize/train/score path the jobs take
    image: ImageFlowConf = ImageFlowConf()
    text: TextFlowConf = TextFlowConf()
    spark: SparkConf = SparkConf()
    storage: StorageConf = StorageConf()
    mlflow: MlflowConf = MlflowConf()
    demo: DemoConf = DemoConf()
    ingest: IngestConf
    features: FeaturesConf = FeaturesConf()
    training: TrainingConf = TrainingConf()
    scoring: ScoringConf = ScoringConf()
    monitor: MonitorConf = MonitorConf()

    @property
    def workspace(self) -> str:
        """Workspace root as an absolute local path or a URI (hdfs://, s3a://)."""
        ws = self.storage.workspace
        return ws if "://" in ws else str(Path(ws).expanduser().resolve())

    def table_path(self, layer: str, name: str) -> str:
        if layer not in LAYERS:
            raise ConfigError(f"unknown table layer {layer!r}; layers are {LAYERS}")
        return f"{self.workspace.rstrip('/')}/tables/{layer}/{name}"

    @property
    def landing(self) -> str:
        return f"{self.workspace.rstrip('/')}/tables/landing"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.workspace}/mlflow.db"

    @property
    def artifact_root(self) -> str:
        return self.mlflow.artifact_root or f"{self.workspace}/mlartifacts"


LAYERS = ("landing", "bronze", "silver", "gold", "quarantine")


def _expand_env(value: Any, where: str, key: str) -> Any:
    """Replace ${VAR} / ${VAR:-default} in strings; a missing variable without default is an error."""
    if isinstance(value, dict):
        return {k: _expand_env(v, where, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, where, key) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var in os.environ and os.environ[var] != "":
            return os.environ[var]
        if default is None:
            raise ConfigError(f"{key}: environment variable {var} is not set ({where})")
        return default

    while True:  # innermost first, so defaults may themselves use ${VAR:-default}
        expanded = _ENV_REF.sub(sub, value)
        if expanded == value:
            return expanded
        value = expanded


def _merge(base: dict, over: dict, origin: dict[str, str], where: str, prefix: str = "") -> dict:
    """Deep-merge `over` into `base`, remembering which file set each dotted key."""
    out = dict(base)
    for k, v in over.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, origin, where, key + ".")
        else:
            out[k] = v
            origin[key] = where
            if isinstance(v, dict):
                for sub in _flatten(v, key + "."):
                    origin[sub] = where
    return out


def _flatten(d: dict, prefix: str) -> list[str]:
    keys = []
    for k, v in d.items():
        keys.append(prefix + str(k))
        if isinstance(v, dict):
            keys.extend(_flatten(v, f"{prefix}{k}."))
    return keys


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", parsed value); the value is read as YAML so numbers and lists keep their type."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: bad key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _key_path(data: dict, key: str) -> list[str]:
    """Split a dotted override key along the existing config; a map with dotted keys (spark.conf) takes the rest.

    `spark.conf.spark.sql.shuffle.partitions` -> ["spark", "conf", "spark.sql.shuffle.partitions"].
    """
    parts, path, node = key.split("."), [], data
    while parts:
        rest = ".".join(parts)
        if isinstance(node, dict) and (rest in node or (parts[0] not in node and any("." in k for k in node))):
            return [*path, rest]
        path.append(parts.pop(0))
        node = node.get(path[-1]) if isinstance(node, dict) else None
    return path


def _nest(path: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def _pipeline_name(root: Path, env: str, overrides: list[str] | tuple[str, ...]) -> str:
    """The pipeline profile asked for: the last --set pipeline=..., else conf/<env> or conf/base, else the default."""
    for item in reversed(list(overrides)):
        key, value = parse_override(item)
        if key == "pipeline":
            return str(value)
    for layer in (root / env, root / "base"):
        for path in sorted(layer.glob("*.yaml"), reverse=True) if layer.is_dir() else []:
            data = _read_yaml(path)
            if "pipeline" in data:
                return str(data["pipeline"])
    return DEFAULT_PIPELINE


def available_pipelines(conf_dir: str | Path | None = None) -> list[str]:
    """Pipeline profiles: the default (base config) and one per folder in conf/pipelines/."""
    folder = Path(conf_dir or os.environ.get("PIPELINE_CONF_DIR") or REPO_ROOT / "conf") / "pipelines"
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return [DEFAULT_PIPELINE, *[p for p in extra if p != DEFAULT_PIPELINE]]


def load_config(
    env: str = "local", overrides: list[str] | tuple[str, ...] = (), conf_dir: str | Path | None = None
) -> Config:
    """Load conf/base/*.yaml, conf/pipelines/<pipeline>/*.yaml, conf/<env>/*.yaml, then `key=value` overrides;
    validate; return Config. The pipeline profile (flights by default) selects a whole flow by name."""
    if env not in ENVS:
        raise ConfigError(f"env: unknown environment {env!r}; choose one of {ENVS}")
    root = Path(conf_dir or os.environ.get("PIPELINE_CONF_DIR") or REPO_ROOT / "conf")
    if not (root / "base").is_dir():
        raise ConfigError(f"config folder {root}/base not found (set PIPELINE_CONF_DIR or --conf-dir)")
    origin: dict[str, str] = {"env": "--env"}
    data: dict = {"env": env}
    pipeline = _pipeline_name(root, env, overrides)
    if pipeline not in available_pipelines(root):
        raise ConfigError(f"pipeline: unknown pipeline {pipeline!r}; available: {available_pipelines(root)}")
    for layer in (root / "base", root / "pipelines" / pipeline, root / env):
        for path in sorted(layer.glob("*.yaml")) if layer.is_dir() else []:
            where = str(path.relative_to(root.parent) if root.parent in path.parents else path)
            data = _merge(data, _expand_env(_read_yaml(path), where, ""), origin, where)
    for item in overrides:
        key, value = parse_override(item)
        data = _merge(data, _expand_env(_nest(_key_path(data, key), value), "--set", ""), origin, "--set")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, origin)) from None


def _describe(err: ValidationError, origin: dict[str, str]) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        where = _origin_of(key, origin)
        msg = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        if item["type"] != "extra_forbidden" and "input" in item and not isinstance(item["input"], dict):
            msg += f" (got {item['input']!r})"
        lines.append(f"{key}: {msg} [{where}]")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _origin_of(key: str, origin: dict[str, str]) -> str:
    parts = key.split(".")
    while parts:
        k = ".".join(parts)
        if k in origin:
            return origin[k]
        parts.pop()
    return "defaults"
