"""Text flow: exact tokens and bigrams, the fitted text PipelineModel round trip, prepare_text counts, and the
features run end to end on the trump_tweets demo data."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from features.text import CLEAN_COL, FILTERED_COL, NGRAMS_COL, TOKENS_COL, TextCleaner
from pipelines.core.config import ClassLabelConf, Config
from pipelines.core.delta import DeltaStore
from pipelines.flows.base import FEATURES, LABEL, SPLITS
from pipelines.flows.labels import LABEL_NAME
from pipelines.flows.text.config import TextFlowConf
from pipelines.flows.text.nodes import text_stages

TWEETS = [
    (1, "Make America GREAT again! https://t.co/x #MAGA @foo"),
    (2, "Let\u2019s WIN &amp; win &gt; them 'all' www.trump.com/x don't"),
    (3, None),
    (4, "Make America safe, again and again: www.x.org"),
]


def _token_rows(spark: SparkSession, conf: TextFlowConf) -> dict[int, dict[str, list[str] | str]]:
    df = spark.createDataFrame(TWEETS, "id_str bigint, text string")
    model = Pipeline(stages=text_stages(conf)).fit(df)
    out = model.transform(df)
    cols = [c for c in ("id_str", CLEAN_COL, TOKENS_COL, FILTERED_COL, NGRAMS_COL) if c in out.columns]
    return {r.id_str: r.asDict() for r in out.select(*cols).collect()}


def test_clean_tokens_stop_words_and_bigrams(spark: SparkSession) -> None:
    conf = TextFlowConf(num_features=16, word2vec_size=0, extra_stop_words=["WIN"])
    rows = _token_rows(spark, conf)
    assert rows[1][TOKENS_COL] == ["make", "america", "great", "again", "url", "#maga", "@foo"]
    assert rows[1][FILTERED_COL] == ["make", "america", "great", "url", "#maga", "@foo"]
    assert rows[1][NGRAMS_COL] == ["make america", "america great", "great url", "url #maga", "#maga @foo"]
    # Entities decoded, curly apostrophe straightened, quote marks dropped, extra stop word removed (any case).
    assert rows[2][CLEAN_COL].split() == ["let's", "win", "&", "win", ">", "them", "all", "url", "don't"]
    assert rows[2][TOKENS_COL] == ["let's", "win", "win", "them", "all", "url", "don't"]
    assert rows[2][FILTERED_COL] == ["url"] and rows[2][NGRAMS_COL] == []
    assert rows[3][CLEAN_COL] == "" and rows[3][TOKENS_COL] == [] and rows[3][NGRAMS_COL] == []
    kept = _token_rows(spark, TextFlowConf(num_features=16, word2vec_size=0, stop_words=False, strip_urls=False,
                                           ngram=3, min_token_length=3))
    assert FILTERED_COL not in kept[4]  # no StopWordsRemover stage
    assert kept[4][TOKENS_COL] == ["make", "america", "safe", "again", "and", "again", "www", "org"]
    assert kept[4][NGRAMS_COL][:2] == ["make america safe", "america safe again"]


def test_cleaner_params_round_trip(spark: SparkSession, tmp_path: Path) -> None:
    cleaner = TextCleaner(inputCol="text", outputCol="clean", stripUrls=False)
    cleaner.write().overwrite().save(str(tmp_path / "cleaner"))
    loaded = TextCleaner.load(str(tmp_path / "cleaner"))
    assert (loaded.getInputCol(), loaded.getOutputCol(), loaded.getStripUrls()) == ("text", "clean", False)
    assert TextCleaner().getStripUrls() is True
    df = spark.createDataFrame([("See HTTPS://t.co/Ab",)], "text string")
    assert loaded.transform(df).first().clean == "see https://t.co/ab"


def test_pipeline_model_round_trip_and_size(spark: SparkSession, tmp_path: Path) -> None:
    conf = TextFlowConf(num_features=32, word2vec_size=6, word2vec_min_count=1, idf_min_doc_freq=1)
    df = spark.createDataFrame(TWEETS, "id_str bigint, text string")
    model = Pipeline(stages=text_stages(conf, "vec")).fit(df)
    before = {r.id_str: r.vec.toArray().tolist() for r in model.transform(df).collect()}
    model.write().overwrite().save(str(tmp_path / "text_model"))
    after = {r.id_str: r.vec.toArray().tolist() for r in PipelineModel.load(str(tmp_path / "text_model"))
             .transform(df).collect()}
    assert after == before
    assert {len(v) for v in before.values()} == {2 * 32 + 6}
    assert any(x != 0 for x in before[1][:32]) and any(x != 0 for x in before[1][32:64])
    assert before[3] == [0.0] * (2 * 32 + 6)  # null text: empty tokens, zero vector, no error
    no_ngrams = Pipeline(stages=text_stages(TextFlowConf(num_features=8, word2vec_size=0, ngram=0))).fit(df)
    assert no_ngrams.transform(df).first().features_vector.size == 8
    with pytest.raises(ValueError, match="every branch is off"):
        text_stages(TextFlowConf(num_features=0, word2vec_size=0))


def test_prepare_text_counts(spark: SparkSession) -> None:
    from pipelines.flows.text.nodes import prepare_text

    rows = [(1, "a", "one"), (1, "a", "one again"), (2, "b", "two"), (3, "zzz", "unknown source"),
            (4, "a", "   "), (5, "b", None), (6, None, "no source"), (None, "a", "no key"), (7, "b", "seven")]
    df = spark.createDataFrame(rows, "id_str bigint, source string, text string")
    conf = TextFlowConf(label=ClassLabelConf(column="source", classes=["a", "b"]))
    out, counts = prepare_text(df, conf, ["a", "b"])
    assert counts == {"rows_in": 9, "excluded_no_key": 1, "duplicates_removed": 1, "excluded_no_class": 2,
                      "excluded_empty_text": 2, "rows_out": 3}
    got = {r.id_str: (r[LABEL_NAME], r[LABEL], r.split) for r in out.collect()}
    assert set(got) == {1, 2, 7} and got[2][:2] == ("b", 1) and got[7][:2] == ("b", 1)
    assert all(sp in SPLITS for _, _, sp in got.values())
    with_other = TextFlowConf(label=ClassLabelConf(column="source", classes=["a", "b"], other="other"))
    out, counts = prepare_text(df, with_other, ["a", "b", "other"])
    assert counts["excluded_no_class"] == 1 and counts["rows_out"] == 4  # null source is never a class
    assert out.filter(F.col("id_str") == 3).first()[LABEL] == 2


def test_text_features_end_to_end(spark: SparkSession, make_cfg: Callable[..., Config], store: DeltaStore) -> None:
    from pipelines.core.recorder import latest_features_record
    from pipelines.flows import get_flow
    from pipelines.stages.features import run_features
    from pipelines.stages.ingest.run import ingest
    from pipelines.stages.land_demo import land_tweets

    cfg = make_cfg("pipeline=tweets", "features.stats.enabled=false", "flow.num_features=256", "flow.word2vec_size=8")
    land_tweets(cfg.catalog.landing)
    ingest(spark, cfg, store, "t", ["tweets"])
    start = time.perf_counter()
    result = run_features(spark, cfg, store, get_flow(cfg))
    seconds = time.perf_counter() - start
    run = result.run
    table = store.read(run.table_path, run.table_version)
    c = result.counts
    print(f"\ntext features run: {seconds:.1f}s counts={c} splits={result.splits}")
    left_out = c["excluded_no_key"] + c["duplicates_removed"] + c["excluded_no_class"] + c["excluded_empty_text"]
    assert table.count() == c["rows_out"] == c["rows_in"] - left_out
    assert c["rows_in"] == 20761
    assert run.classes == ["Twitter Web Client", "Twitter for Android", "Twitter for iPhone", "other"]
    assert run.vector_size == 2 * 256 + 8
    assert table.select(F.max(F.size(FEATURES))).first()[0] == 2 * 256 + 8
    assert all(result.splits[sp]["rows"] > 0 for sp in SPLITS)
    assert all(result.splits[sp][f"class.{k}"] > 0 for sp in SPLITS for k in run.classes)
    assert {r[0] for r in table.select(LABEL).distinct().collect()} == {0, 1, 2, 3}
    assert latest_features_record(cfg).run_id == run.run_id
    sample = table.orderBy("id_str").limit(3)
    rescored = PipelineModel.load(latest_features_record(cfg).model_path).transform(sample.drop(FEATURES))
    again = {r.id_str: r.features_vector.toArray().tolist() for r in rescored.collect()}
    stored = {r.id_str: r[FEATURES] for r in sample.collect()}
    assert again.keys() == stored.keys()
    for key, vec in stored.items():
        assert again[key] == pytest.approx(vec, rel=1e-6)
