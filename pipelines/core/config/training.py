"""The `training` section: the network, the optimizer and the barrier-stage launcher."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.core.config.base import Strict


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

    monitor: Literal["val_auc", "val_loss", "val_pr_auc", "val_accuracy", "val_rmse", "val_mae"] = "val_auc"
    patience: int = Field(default=3, ge=1)
    min_delta: float = Field(default=0.0001, ge=0)


class TrainDataConf(Strict):
    """Which feature table version to train on (through its features run) and how Petastorm feeds it."""

    features_run_id: str | None = None  # default: the latest finished features run for features.output_table
    sample_fraction: float = Field(default=1.0, gt=0, le=1)  # per split, seeded: smoke runs and tests
    files_per_worker: int = Field(default=4, ge=1)  # Parquet files in the Petastorm cache per worker
    reader_threads: int = Field(default=2, ge=1)  # Petastorm reader pool per worker
    shuffle_buffer: int = Field(default=10000, ge=0)  # rows permuted together per block; 0 = no shuffle


class HorovodConf(Strict):
    """Gloo rendezvous on the driver; None = 127.0.0.1 / loopback in local mode, the driver host otherwise."""

    rendezvous_host: str | None = None
    bind_address: str | None = None  # the rendezvous server listens here; None = 127.0.0.1 locally, else
    # spark.driver.bindAddress, else all interfaces (ranks on other hosts must reach it)
    iface: str | None = None  # network interface for gloo; None = lo locally, else the one holding the task's IP
    gloo_timeout_s: int = Field(default=120, gt=0)  # HOROVOD_GLOO_TIMEOUT_SECONDS: rendezvous and connect
    timeline: str | None = None  # HOROVOD_TIMELINE: rank 0 writes Horovod's Chrome-trace timeline to this local file


class GbtGridConf(Strict):
    """GBTClassifier's TrainValidationSplit grid (binary head only: MLlib's GBT classifies two classes)."""

    max_iter: int = Field(default=20, ge=1)
    max_depths: list[int] = Field(default_factory=lambda: [3, 5], min_length=1)
    step_sizes: list[float] = Field(default_factory=lambda: [0.1], min_length=1)


class RfGridConf(Strict):
    """RandomForestClassifier's TrainValidationSplit grid."""

    num_trees: list[int] = Field(default_factory=lambda: [20, 50], min_length=1)
    max_depths: list[int] = Field(default_factory=lambda: [5, 8], min_length=1)


class BaselineConf(Strict):
    """MLlib baselines on the same features, each tuned with TrainValidationSplit and logged as a nested run.

    `kinds` lists them; the binary head runs every kind, the multiclass and regression heads run their linear
    model only (multinomial logistic / linear regression) and skip gbt and rf with a log line."""

    enabled: bool = True
    kinds: list[Literal["logreg", "gbt", "rf"]] = Field(default_factory=lambda: ["logreg"], min_length=1)
    reg_params: list[float] = Field(default_factory=lambda: [0.0, 0.01])  # logreg
    elastic_net_params: list[float] = Field(default_factory=lambda: [0.0, 0.5])  # logreg
    max_iter: int = Field(default=50, ge=1)  # logreg / linreg
    gbt: GbtGridConf = GbtGridConf()
    rf: RfGridConf = RfGridConf()
    train_ratio: float = Field(default=0.8, gt=0, lt=1)
    parallelism: int = Field(default=2, ge=1)
    max_train_rows: int | None = Field(default=50_000, gt=0)  # seeded sample of the train split; None = every row


class FloatRange(Strict):
    """A float search dimension: uniform in [low, high], or log-uniform when `log`."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got low={self.low} high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


class SearchSpaceConf(Strict):
    """What a trial may choose: learning rate (per worker), hidden layers, dropout, per-worker batch size."""

    learning_rate: FloatRange = FloatRange(low=1e-4, high=3e-3, log=True)
    hidden_units: list[list[int]] = Field(default_factory=lambda: [[32], [64], [128], [64, 32]], min_length=1)
    dropout: FloatRange = FloatRange(low=0.0, high=0.5)
    batch_size: list[int] = Field(default_factory=lambda: [128, 256, 512], min_length=1)

    @field_validator("hidden_units")
    @classmethod
    def _units(cls, v: list[list[int]]) -> list[list[int]]:
        if any(not layers or any(u < 1 for u in layers) for layers in v):
            raise ValueError("each choice needs at least one layer, each with >= 1 unit")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError(f"batch sizes must be >= 1, got {v}")
        return v

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: FloatRange) -> FloatRange:
        if v.low < 0 or v.high >= 1:
            raise ValueError(f"dropout must lie in [0, 1), got [{v.low}, {v.high}]")
        return v


class PrunerConf(Strict):
    """Optuna's MedianPruner on the per-epoch validation metric rank 0 reports to the driver."""

    enabled: bool = True
    startup_trials: int = Field(default=2, ge=0)  # trials that always run to the end
    warmup_epochs: int = Field(default=1, ge=0)  # epochs of a trial before it may be pruned


class SearchConf(Strict):
    """`train --search`: `trials` barrier trainings chosen by Optuna (TPE, seeded), then the best retrains."""

    trials: int = Field(default=8, ge=1)
    seed: int = 7
    epochs: int | None = Field(default=None, ge=1)  # epochs per trial; None = training.epochs
    timeout_s: int | None = Field(default=None, gt=0)  # stop starting trials after this long
    pruner: PrunerConf = PrunerConf()
    space: SearchSpaceConf = SearchSpaceConf()


class FaultConf(Strict):
    """Test-only fault injection: rank `fail_rank` fails at the start of epoch `fail_epoch` (None = off)."""

    fail_rank: int | None = None
    fail_epoch: int = Field(default=1, ge=0)
    only_first_attempt: bool = True  # the retried attempt runs clean
    mode: Literal["raise", "exit"] = "raise"  # exit: the process dies without a Python traceback


FRAMEWORK_BACKENDS = {"tensorflow": ("horovod", "tf-mwms"), "pytorch": ("torch-ddp",)}


class TrainingConf(Strict):
    """Distributed training: N workers in one Spark barrier stage (Horovod over gloo, or TF MultiWorkerMirrored).

    `batch_size` is per worker. The barrier stage is retried by Spark (spark.stage.maxConsecutiveAttempts) up to
    `max_attempts` times; a retry continues from the latest checkpoint. `timeout_s` bounds all attempts together.
    """

    framework: Literal["tensorflow", "pytorch"] = "tensorflow"  # Keras 2 (tf.keras) or PyTorch DDP
    backend: Literal["horovod", "tf-mwms", "torch-ddp"] | None = None  # None: the framework's first backend
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
    promote_metric: Literal["roc_auc", "pr_auc", "accuracy", "macro_f1", "rmse", "mae", "r2"] = "roc_auc"
    data: TrainDataConf = TrainDataConf()
    network: NetworkConf = NetworkConf()
    optimizer: OptimizerConf = OptimizerConf()
    early_stopping: EarlyStoppingConf = EarlyStoppingConf()
    horovod: HorovodConf = HorovodConf()
    baseline: BaselineConf = BaselineConf()
    search: SearchConf = SearchConf()
    fault: FaultConf = FaultConf()

    @model_validator(mode="before")
    @classmethod
    def _backend_of_framework(cls, data: Any) -> Any:
        """backend None is the framework's default; a backend of the other framework is an error."""
        if not isinstance(data, dict):
            return data
        framework = data.get("framework") or "tensorflow"
        allowed = FRAMEWORK_BACKENDS.get(framework)
        if allowed is None:
            return data  # the field's own check names the bad framework
        if data.get("backend") is None:
            return {**data, "backend": allowed[0]}
        if data["backend"] not in allowed:
            raise ValueError(f"training.backend {data['backend']} does not train {framework} models; "
                             f"training.framework={framework} trains with {' | '.join(allowed)}")
        return data

    @field_validator("fault")
    @classmethod
    def _fault_rank(cls, v: FaultConf, info: Any) -> FaultConf:
        n = info.data.get("num_workers", 1)
        if v.fail_rank is not None and not 0 <= v.fail_rank < n:
            raise ValueError(f"fail_rank must be a rank 0..{n - 1} (num_workers={n}), got {v.fail_rank}")
        return v


