"""Text flow nodes: tweets (or any keyed text with a class column) -> deduplicated, labelled, hash-split rows ->
text stages (clean -> RegexTokenizer -> StopWordsRemover -> NGram -> HashingTF + IDF and Word2Vec) -> one vector.

Rows that cannot be used are never dropped silently: each is counted under one reason, and the counts must add
up to the rows read.
"""

from __future__ import annotations

from typing import Any

from pyspark.ml import PipelineModel
from pyspark.ml.feature import (
    IDF,
    HashingTF,
    NGram,
    RegexTokenizer,
    StopWordsRemover,
    VectorAssembler,
    Word2Vec,
    Word2VecModel,
)
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from features.text import (
    CLEAN_COL,
    FILTERED_COL,
    NGRAM_TF_COL,
    NGRAM_TFIDF_COL,
    NGRAMS_COL,
    TF_COL,
    TFIDF_COL,
    TOKENS_COL,
    W2V_COL,
    TextCleaner,
)
from pipelines.core.config import ConfigError
from pipelines.flows.base import FEATURES, LABEL, VECTOR_COL
from pipelines.flows.labels import LABEL_NAME, hash_split, with_labels
from pipelines.flows.text.config import TextFlowConf

TOP_TOKENS = 20
SAMPLES = 5
# Why a row is left out, in the order the reasons are checked (a row counts under its first reason).
REASONS = ("excluded_no_key", "duplicates_removed", "excluded_no_class", "excluded_empty_text")
_REASON = "_text_reason"


def _check_columns(tweets: DataFrame, conf: TextFlowConf) -> None:
    """The key, text and label columns must exist: name the config key of a missing one."""
    wanted = {"flow.key": conf.key, "flow.text_column": conf.text_column, "flow.label.column": conf.label.column}
    missing = {k: c for k, c in wanted.items() if c not in tweets.columns}
    if missing:
        raise ConfigError(f"{', '.join(f'{k}={c!r}' for k, c in missing.items())}: no such column "
                          f"(have {tweets.columns})")


def prepare_text(tweets: DataFrame, conf: TextFlowConf, classes: list[str]) -> tuple[DataFrame, dict[str, int]]:
    """Dedupe on the key, label, leave out unusable rows (counted by reason), hash-split; returns (rows, counts).

    Of duplicate keys the row with text is kept, ties broken by a hash of the row, so the choice is
    deterministic. A null key is excluded (it cannot be split or deduplicated); a value outside the classes with
    no `other` class, or a null label value, is excluded; so is null or blank text. Raises RuntimeError when
    rows_in != rows_out + exclusions.
    """
    _check_columns(tweets, conf)
    key, text = F.col(conf.key), F.col(conf.text_column)
    blank = text.isNull() | (F.trim(text) == "")
    rest = sorted(c for c in tweets.columns if c != conf.key)
    rank = F.row_number().over(Window.partitionBy(conf.key).orderBy(blank.asc(), F.xxhash64(*rest).asc()))
    labelled = with_labels(tweets.withColumn("_dup_rank", rank), conf.label, classes)
    reason = (F.when(key.isNull(), REASONS[0]).when(F.col("_dup_rank") > 1, REASONS[1])
              .when(F.col(LABEL).isNull(), REASONS[2]).when(blank, REASONS[3]))
    marked = labelled.withColumn(_REASON, reason).drop("_dup_rank")
    by_reason = {r[_REASON]: int(r["count"]) for r in marked.groupBy(_REASON).count().collect()}
    rows_in = tweets.count()
    counts = {"rows_in": rows_in, **{r: by_reason.get(r, 0) for r in REASONS}, "rows_out": by_reason.get(None, 0)}
    if rows_in != counts["rows_out"] + sum(counts[r] for r in REASONS):
        raise RuntimeError(f"text rows do not add up: {counts}")
    kept = marked.filter(F.col(_REASON).isNull()).drop(_REASON)
    return hash_split(kept, conf.key, conf.split), counts


def feature_table(transformed: DataFrame, conf: TextFlowConf) -> DataFrame:
    """The silver table's columns: key, created_at (when present), text, label_name, label, split, features."""
    extra = ["created_at"] if "created_at" in transformed.columns else []
    return transformed.select(conf.key, *extra, conf.text_column, LABEL_NAME, LABEL, "split",
                              vector_to_array(VECTOR_COL, "float32").alias(FEATURES))


def text_report(model: PipelineModel, train: DataFrame, conf: TextFlowConf) -> dict[str, Any]:
    """Top tokens per class on train, Word2Vec vocabulary size and a few tokenized samples (for a human to read)."""
    tokens = token_column(conf)
    done = model.transform(train)
    counted = (done.select(LABEL_NAME, F.explode(tokens).alias("token")).groupBy(LABEL_NAME, "token").count()
               .withColumn("rank", F.row_number().over(
                   Window.partitionBy(LABEL_NAME).orderBy(F.desc("count"), F.asc("token"))))
               .filter(F.col("rank") <= TOP_TOKENS).orderBy(LABEL_NAME, "rank").collect())
    top: dict[str, list[list[Any]]] = {}
    for r in counted:
        top.setdefault(r[LABEL_NAME], []).append([r["token"], int(r["count"])])
    w2v = [s for s in model.stages if isinstance(s, Word2VecModel)]
    cols = [conf.key, conf.text_column, LABEL_NAME, tokens, *([NGRAMS_COL] if branches(conf)["ngram_tfidf"] else [])]
    samples = [r.asDict() for r in done.select(*cols).orderBy(F.xxhash64(conf.key)).limit(SAMPLES).collect()]
    return {"top_tokens": top, "word2vec_vocabulary": w2v[0].getVectors().count() if w2v else None,
            "samples": samples}


def text_params(conf: TextFlowConf) -> dict[str, Any]:
    """The text config as flat MLflow params (text.<key>)."""
    skip = {"label", "split", "kind", "module"}
    flat = {f"text.{k}": v for k, v in conf.model_dump(mode="json", exclude=skip).items()}
    flat["text.label"] = conf.label.model_dump_json()
    flat["text.split"] = conf.split.model_dump_json()
    return flat


def token_column(conf: TextFlowConf) -> str:
    """The token column the TF-IDF, n-gram and Word2Vec branches read: without stop words when they are removed."""
    return FILTERED_COL if conf.stop_words else TOKENS_COL


def branches(conf: TextFlowConf) -> dict[str, bool]:
    """Which vector branches the config turns on (tokens TF-IDF, n-gram TF-IDF, Word2Vec)."""
    return {"tfidf": conf.num_features > 0, "ngram_tfidf": conf.num_features > 0 and conf.ngram >= 2,
            "word2vec": conf.word2vec_size > 0}


def vector_size(conf: TextFlowConf) -> int:
    """Length of the assembled vector: num_features per TF-IDF branch plus the Word2Vec size."""
    on = branches(conf)
    return conf.num_features * (on["tfidf"] + on["ngram_tfidf"]) + conf.word2vec_size * on["word2vec"]


def text_stages(conf: TextFlowConf, output_col: str = "features_vector") -> list[Any]:
    """The unfitted stages from the text column to one vector in `output_col` (IDF and Word2Vec need fitting).

    An n-gram branch needs ngram >= 2 (1-grams are the tokens) and num_features > 0; raises ValueError when no
    branch is on, since an empty vector cannot be trained on.
    """
    on = branches(conf)
    if not any(on.values()):
        raise ValueError("text: every branch is off (num_features = 0 and word2vec_size = 0); turn one on")
    tokens = token_column(conf)
    stages: list[Any] = [
        TextCleaner(inputCol=conf.text_column, outputCol=CLEAN_COL, stripUrls=conf.strip_urls),
        RegexTokenizer(inputCol=CLEAN_COL, outputCol=TOKENS_COL, pattern=conf.token_pattern, gaps=True,
                       minTokenLength=conf.min_token_length, toLowercase=False),
    ]
    if conf.stop_words:
        words = list(dict.fromkeys([*StopWordsRemover.loadDefaultStopWords("english"),
                                    *(w.lower() for w in conf.extra_stop_words)]))
        # Tokens are lower case already: a case-sensitive match does not depend on the JVM's locale.
        stages.append(StopWordsRemover(inputCol=TOKENS_COL, outputCol=FILTERED_COL, stopWords=words,
                                       caseSensitive=True))
    assembled: list[str] = []
    if on["tfidf"]:
        stages += [HashingTF(inputCol=tokens, outputCol=TF_COL, numFeatures=conf.num_features),
                   IDF(inputCol=TF_COL, outputCol=TFIDF_COL, minDocFreq=conf.idf_min_doc_freq)]
        assembled.append(TFIDF_COL)
    if on["ngram_tfidf"]:
        stages += [NGram(inputCol=tokens, outputCol=NGRAMS_COL, n=conf.ngram),
                   HashingTF(inputCol=NGRAMS_COL, outputCol=NGRAM_TF_COL, numFeatures=conf.num_features),
                   IDF(inputCol=NGRAM_TF_COL, outputCol=NGRAM_TFIDF_COL, minDocFreq=conf.idf_min_doc_freq)]
        assembled.append(NGRAM_TFIDF_COL)
    if on["word2vec"]:
        stages.append(Word2Vec(inputCol=tokens, outputCol=W2V_COL, vectorSize=conf.word2vec_size,
                               minCount=conf.word2vec_min_count, maxIter=conf.word2vec_max_iter, seed=conf.seed))
        assembled.append(W2V_COL)
    stages.append(VectorAssembler(inputCols=assembled, outputCol=output_col))
    return stages
