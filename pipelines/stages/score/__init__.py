"""The score stage (`spark-submit.sh score`): a registered model version -> gold predictions.

- batch: the rows of given dates (or the whole source table) scored into gold (`run_score`), and the model
  resolution and writers the streaming scorer and the monitor share;
- stream: `score --stream`, new landing files scored as they arrive, exactly once (`run_stream`).
"""
