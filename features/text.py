"""Text featurization as pyspark.ml stages: TextCleaner -> RegexTokenizer -> StopWordsRemover -> NGram ->
HashingTF + IDF (tokens and n-grams) and Word2Vec -> one vector.

`TextCleaner` normalizes raw tweet text with Spark SQL functions only (no Python UDF, so it runs in the JVM and a
saved PipelineModel needs no Python to score): lower case, HTML entities decoded, curly apostrophes made straight,
URLs replaced by the token "url" (a link says "there is a link", not which one), null text as "". The column
names of the chain (pipelines.flows.text builds it from config) start with "text__" so they cannot clash with
data columns.
"""

from __future__ import annotations

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

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
