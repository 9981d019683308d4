"""train --search: hyperparameter search for the Keras model with Optuna, on the driver (driver side only).

Why Optuna and not Hyperopt's SparkTrials: SparkTrials runs each trial inside a Spark task, and one training here
is itself a barrier stage of N Horovod ranks, which cannot be launched from inside a task. Optuna's study lives
on the driver (ask/tell), and each trial is one real barrier-mode Horovod training launched from the driver like
the train job's: trained on the train split, judged on the validation split. The test split is never looked at
during the search.

Per trial:
  - the sampler (TPE, seeded by training.search.seed) picks learning rate (log scale), hidden layers, dropout and
    per-worker batch size from training.search.space;
  - the trial trains for training.search.epochs (default training.epochs), with the usual early stopping;
  - pruning: rank 0 already reports every epoch's (rank-averaged) validation metrics to the driver over the
    control channel; the driver reports the head's monitor (val_auc for binary) to Optuna's MedianPruner as the
    trial's intermediate value, and when the pruner says stop, the launcher cancels the barrier stage's job group
    (the training processes die with their tasks) and the trial is recorded as PRUNED;
  - a completed trial's value is the promotion metric (ROC AUC for binary) of its best-epoch weights on the whole
    validation split, computed on the driver with the same code as the train job's evaluation;
  - one nested MLflow run under the search's parent run: params, per-epoch val metric, the value, state
    (COMPLETE / PRUNED / FAIL), epochs and duration.
The Petastorm caches are written once and shared by every trial. Then the best trial's configuration retrains
with training.epochs as a normal train run (nested under the search run, tagged with it): evaluation, pyfunc,
baselines, and registration through the champion rule (registry.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyspark.sql import SparkSession

from pipelines.core.config import Config, SearchSpaceConf, TrainingConf
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import LOG, stage
from pipelines.core.recorder import Recorder, flat, log_config
from pipelines.core.tracking import git_commit
from pipelines.training import report
from pipelines.training.driver import TrainingFailed, TrainingStopped
from pipelines.training.inputs import JOB, Task, TrainingData, checkpoint_root, class_weights
from pipelines.training.launch import Caches, Launch, fit_on, petastorm_caches
from pipelines.training.predict import trained_model, validation_metric
from pipelines.training.trainer import TrainResult, train_with

if TYPE_CHECKING:
    from pipelines.flows.base import Flow

SEARCH_JOB = f"{JOB}.search"
TRIAL_JOB = f"{JOB}.trial"
COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"


@dataclass
class TrialRecord:
    """One trial as the search table shows it."""

    number: int
    run_id: str
    params: dict[str, Any]
    state: str
    value: float | None  # the promotion metric on validation (complete trials)
    last_intermediate: float | None  # the last per-epoch validation monitor rank 0 reported
    epochs: int
    seconds: float
    error: str | None = None


@dataclass
class SearchResult:
    run_id: str
    metric: str
    trials: list[TrialRecord]
    best: TrialRecord
    train: TrainResult
    pruned: list[int] = field(default_factory=list)


def _units_key(units: list[int]) -> str:
    return "-".join(str(u) for u in units)


def suggest(trial: Any, space: SearchSpaceConf) -> dict[str, Any]:
    """The trial's choice from the configured space (hidden layers travel as '64-32' keys through Optuna)."""
    lr, dropout = space.learning_rate, space.dropout
    units = {_units_key(u): u for u in space.hidden_units}
    return {
        "learning_rate": trial.suggest_float("learning_rate", lr.low, lr.high, log=lr.log),
        "hidden_units": units[trial.suggest_categorical("hidden_units", list(units))],
        "dropout": trial.suggest_float("dropout", dropout.low, dropout.high, log=dropout.log),
        "batch_size": trial.suggest_categorical("batch_size", space.batch_size),
    }


def with_params(tc: TrainingConf, params: dict[str, Any], epochs: int | None = None) -> TrainingConf:
    """`tc` with a trial's params (validated again): the MLP's layers and dropout, or for a CNN its dropout and
    dense units (the first layer's), the learning rate, the batch size; `epochs` when given."""
    conf = tc.model_dump(mode="json")
    net = conf["network"]
    if net["kind"] == "cnn":
        net["cnn"].update(dropout=params["dropout"], dense_units=params["hidden_units"][0])
    else:
        net["mlp"].update(hidden_units=params["hidden_units"], dropout=params["dropout"])
    conf["optimizer"]["learning_rate"] = params["learning_rate"]
    conf["batch_size"] = params["batch_size"]
    if epochs is not None:
        conf["epochs"] = epochs
    return TrainingConf.model_validate(conf)


def _shown(params: dict[str, Any]) -> dict[str, str]:
    """Params as MLflow and the table show them (the values the retrained run logs under training.*)."""
    return {k: str(v) for k, v in params.items()}


def hyperparameter_search(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, task: Task,
                          data: TrainingData) -> SearchResult:
    """The search on resolved inputs: trials (nested runs) under one parent run, then the best configuration
    retrains and registers through the champion rule."""
    with Recorder.start(cfg, SEARCH_JOB) as rec:
        return _search_in_run(spark, cfg, store, flow, task, data, rec)


def _search_in_run(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, task: Task, data: TrainingData,
                   rec: Recorder) -> SearchResult:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tc, sc, head = cfg.training, cfg.training.search, task.head
    metric, lower = head.promotion(tc.promote_metric)
    monitor = head.monitors[0]  # per-epoch value for the pruner; same direction as the promotion metric
    rec.params({**flat("search.", sc.model_dump(mode="json")), "features_run_id": task.record.run_id,
                "feature_table_version": task.record.table_version, "head": head.name,
                "objective": f"validation_{metric}", "direction": "minimize" if lower else "maximize",
                "prune_on": monitor, "num_workers": tc.num_workers, "framework": tc.framework,
                "backend": tc.backend, "git_commit": git_commit(),
                **{f"rows.{k}": v["rows"] for k, v in data.counts.items()}})
    rec.tags({"features_run_id": task.record.run_id, "head": head.name})
    log_config(cfg)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=sc.pruner.startup_trials,
                                          n_warmup_steps=sc.pruner.warmup_epochs)
              if sc.pruner.enabled else optuna.pruners.NopPruner())
    study = optuna.create_study(direction="minimize" if lower else "maximize", pruner=pruner,
                                sampler=optuna.samplers.TPESampler(seed=sc.seed))
    weights = class_weights(cfg, task, data)
    records: list[TrialRecord] = []
    started = time.monotonic()
    with petastorm_caches(cfg, data.rows) as caches:
        for _ in range(sc.trials):
            if sc.timeout_s is not None and time.monotonic() - started > sc.timeout_s:
                LOG.info("search: training.search.timeout_s=%d reached after %d trials", sc.timeout_s, len(records))
                break
            trial = study.ask()
            params = suggest(trial, sc.space)
            with stage("search.trial") as s:
                done = _run_trial(spark, cfg, task, data, caches, weights, trial, params, metric, monitor)
                s.add(trial=done.number, state=done.state, epochs=done.epochs,
                      **({f"validation_{metric}": f"{done.value:.4f}"} if done.value is not None else {}),
                      **_shown(params))
            records.append(done)
            if done.state == COMPLETE:
                study.tell(trial, done.value)
            else:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED if done.state == PRUNED
                           else optuna.trial.TrialState.FAIL)
    complete = [r for r in records if r.state == COMPLETE]
    if not complete:
        raise TrainingFailed(f"search: none of {len(records)} trials completed: "
                             f"{[(r.number, r.state, r.error) for r in records]}")
    best = next(r for r in complete if r.number == study.best_trial.number)
    report.record(rec, *trials_table(records, best, metric), "search/trials")
    rec.metrics({f"best_validation_{metric}": best.value or math.nan,
                 "trials_complete": len(complete),
                 "trials_pruned": sum(r.state == PRUNED for r in records),
                 "trials_failed": sum(r.state == FAIL for r in records),
                 "search_seconds": time.monotonic() - started})
    rec.tags({"best_trial": str(best.number), "best_trial_run_id": best.run_id,
              **{f"best.{k}": v for k, v in _shown(best.params).items()}})
    LOG.info("search: best trial %d (validation %s %.4f) %s; retraining it with %d epochs", best.number, metric,
             best.value, _shown(best.params), tc.epochs)
    best_cfg = cfg.model_copy(update={"training": with_params(tc, best.params)})
    with stage("search.retrain"):
        result = train_with(spark, best_cfg, store, flow, task, data, nested=True,
                            tags={"search_run_id": rec.run_id, "search_best_trial": str(best.number),
                                  "search_best_trial_run_id": best.run_id})
    rec.tags({"retrain_run_id": result.run_id, "registered_version": result.version, "alias": result.alias})
    rec.metrics({f"retrain_test_{metric}": result.test[metric],
                 f"retrain_validation_{metric}": result.validation[metric]})
    return SearchResult(rec.run_id, metric, records, best, result, [r.number for r in records if r.state == PRUNED])


def _run_trial(spark: SparkSession, cfg: Config, task: Task, data: TrainingData, caches: Caches,
               weights: dict[int, float] | None, trial: Any, params: dict[str, Any], metric: str,
               monitor: str) -> TrialRecord:
    """One trial: a nested run, one barrier training (pruned through the control channel), validation metric."""
    tc = with_params(cfg.training, params, cfg.training.search.epochs)
    reported: list[tuple[int, float]] = []
    stop: list[int] = []

    def on_epoch(progress: dict[str, Any]) -> bool:  # runs in the control channel's thread
        value = progress.get(monitor)
        if value is None or not math.isfinite(value):
            return False
        epoch = int(progress["epoch"])
        reported.append((epoch, float(value)))
        trial.report(float(value), epoch)
        if trial.should_prune():
            stop.append(epoch)
            LOG.info("search: trial %d pruned after epoch %d (%s %.4f)", trial.number, epoch + 1, monitor, value)
            return True
        return False

    with Recorder.start(cfg, TRIAL_JOB, nested=True) as rec:
        trial_id = rec.run_id
        launch = Launch.of(tc, task, data, weights, f"{checkpoint_root(cfg)}/{trial_id}")
        rec.params({"trial": trial.number, **_shown(params), "epochs": tc.epochs, "framework": tc.framework,
                    "steps_per_epoch": launch.steps_per_epoch, "validation_steps": launch.validation_steps,
                    "effective_batch_size": tc.batch_size * tc.num_workers})
        started = time.perf_counter()
        value, error, epochs, stopped_early = None, None, 0, False
        try:
            results = fit_on(spark, tc, caches, launch, on_epoch=on_epoch)
        except TrainingStopped:
            state = PRUNED
        except TrainingFailed as e:
            state, error = (PRUNED, None) if stop else (FAIL, str(e)[:2000])
        else:
            r0 = results[0]
            epochs, stopped_early = r0.epochs_completed, r0.stopped_early
            state = PRUNED if stop else COMPLETE
            if state == COMPLETE:
                value = validation_metric(trained_model(tc, task, data, r0.weights or []), task, data, tc.seed,
                                          metric)
        seconds = time.perf_counter() - started
        if state == PRUNED:
            epochs = len(reported)
        for epoch, v in reported:
            rec.metrics({monitor: v}, step=epoch)
        rec.metrics({"duration_s": seconds, "epochs_completed": epochs, "stopped_early": float(stopped_early),
                     **({f"validation_{metric}": value} if value is not None else {})})
        rec.tags({"state": state, "trial": str(trial.number), **({"pruned_after_epoch": str(stop[0])} if stop else {}),
                  **({"error": error[:500]} if error else {})})
        if state == FAIL:
            LOG.error("search: trial %d failed: %s", trial.number, error)
    return TrialRecord(trial.number, trial_id, params, state, value, reported[-1][1] if reported else None, epochs,
                       seconds, error)


def trials_table(records: list[TrialRecord], best: TrialRecord, metric: str) -> tuple[list[dict[str, Any]], str]:
    """(rows, markdown) of the search table: trial, params, value, state, epochs, seconds (search/trials.json and
    search/trials.md on the parent run)."""
    rows = [{"trial": r.number, "run_id": r.run_id, **_shown(r.params), "state": r.state,
             f"validation_{metric}": r.value, "last_epoch_value": r.last_intermediate, "epochs": r.epochs,
             "duration_s": round(r.seconds, 1), "best": r.number == best.number} for r in records]
    lines = [f"| trial | learning_rate | hidden_units | dropout | batch_size | validation {metric} | state | epochs "
             "| duration s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        value = f"{r.value:.4f}" if r.value is not None else (
            f"({r.last_intermediate:.4f} at last epoch)" if r.last_intermediate is not None else "-")
        lines.append(f"| {r.number}{' (best)' if r.number == best.number else ''} | {r.params['learning_rate']:.2e} "
                     f"| {r.params['hidden_units']} | {r.params['dropout']:.3f} | {r.params['batch_size']} | {value} "
                     f"| {r.state} | {r.epochs} | {r.seconds:.0f} |")
    return rows, "\n".join(lines) + "\n"
