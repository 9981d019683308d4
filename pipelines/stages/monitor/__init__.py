"""The monitor stage (`spark-submit.sh monitor`): a scored window against the model's training data.

- drift: PSI and KS statistics between two DataFrames, computed in Spark;
- run: input and prediction drift, the realized metric, gold/drift and the alert (`run_monitor`).
"""
