"""Text featurization as pyspark.ml stages: TextCleaner -> RegexTokenizer -> StopWordsRemover -> NGram ->
HashingTF + IDF (tokens and n-grams) and Word2Vec -> one vector.

`TextCleaner` normalizes raw tweet text with Spark SQL functions only (no Python UDF, so it runs in the JVM and a
saved PipelineModel needs no Python to score): lower case, HTML entities decoded, curly apostrophes made straight,
URLs replaced by the token "url" (a link says "there is a link", not which one), null text as "". `text_stages`
builds the configured chain; every intermediate column starts with "text__" so it cannot clash with data columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.feature import IDF, HashingTF, NGram, RegexTokenizer, StopWordsRemover, VectorAssembler, Word2Vec
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

if TYPE_CHECKING:  # a saved model loads features.text without the pipelines package (scoring, serving)
    from pyspark.ml._typing import PipelineStage

    from pipelines.core.config import TextFlowConf

PREFIX = "text__"
CLEAN_COL = f"{PREFIX}clean"
TOKENS_COL = f"{PREFIX}tokens"  # every token of the cleaned text
FILTERED_COL = f"{PREFIX}filtered"  # tokens without stop words
NGRAMS_COL = f"{PREFIX}ngrams"
TF_COL, TFIDF_COL = f"{PREFIX}tf", f"{PREFIX}tfidf"
NGRAM_TF_COL, NGRAM_TFIDF_COL = f"{PREFIX}ngram_tf", f"{PREFIX}ngram_tfidf"
W2V_COL = f"{PREFIX}w2v"

URL_PATTERN = r"(?:https?://|www\.)\S+"
# Decoded in this order, &amp; last, so "&amp;gt;" becomes "&gt;" (one level of escaping), as html.unescape does.
HTML_ENTITIES = (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#39;", "'"), ("&apos;", "'"),
                 ("&nbsp;", " "), ("&amp;", "&"))
CURLY_APOSTROPHES = "\u2018\u2019\u201b\u2032"  # ‘ ’ ‛ ′ -> '
LONE_APOSTROPHE = r"(?<!\w)'|'(?!\w)"  # a quote mark, not part of a word like don't or trump's


class TextCleaner(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """Normalize the text in `inputCol` into `outputCol` for tokenizing; null text gives "" (never an error)."""

    stripUrls: Param[bool] = Param(
        Params._dummy(), "stripUrls", "replace URLs (http://, https://, www.) with the token 'url'",
        typeConverter=TypeConverters.toBoolean,
    )

    @keyword_only
    def __init__(self, *, inputCol: str | None = None, outputCol: str | None = None,
                 stripUrls: bool = True) -> None:
        super().__init__()
        self._setDefault(stripUrls=True)
        kwargs = self._input_kwargs
        self.setParams(**kwargs)

    @keyword_only
    def setParams(self, *, inputCol: str | None = None, outputCol: str | None = None,
                  stripUrls: bool = True) -> TextCleaner:
        """Set any of inputCol, outputCol, stripUrls."""
        kwargs = self._input_kwargs
        return self._set(**kwargs)

    def setInputCol(self, value: str) -> TextCleaner:
        return self._set(inputCol=value)

    def setOutputCol(self, value: str) -> TextCleaner:
        return self._set(outputCol=value)

    def setStripUrls(self, value: bool) -> TextCleaner:
        return self._set(stripUrls=value)

    def getStripUrls(self) -> bool:
        return self.getOrDefault(self.stripUrls)

    def clean(self, text: Column) -> Column:
        """The cleaning expression on a string column (usable outside a pipeline, e.g. in SQL checks)."""
        out = F.lower(F.coalesce(text.cast("string"), F.lit("")))
        for entity, char in HTML_ENTITIES:
            out = F.replace(out, F.lit(entity), F.lit(char))
        out = F.translate(out, CURLY_APOSTROPHES, "'" * len(CURLY_APOSTROPHES))
        if self.getStripUrls():
            out = F.regexp_replace(out, URL_PATTERN, " url ")
        return F.regexp_replace(out, LONE_APOSTROPHE, " ")

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return dataset.withColumn(self.getOutputCol(), self.clean(F.col(self.getInputCol())))


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


def text_stages(conf: TextFlowConf, output_col: str = "features_vector") -> list[PipelineStage]:
    """The unfitted stages from the text column to one vector in `output_col` (IDF and Word2Vec need fitting).

    An n-gram branch needs ngram >= 2 (1-grams are the tokens) and num_features > 0; raises ValueError when no
    branch is on, since an empty vector cannot be trained on.
    """
    on = branches(conf)
    if not any(on.values()):
        raise ValueError("text: every branch is off (num_features = 0 and word2vec_size = 0); turn one on")
    tokens = token_column(conf)
    stages: list[PipelineStage] = [
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
