"""The text flow's `flow:` section: the text stages' settings, the class label and the split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.core.config import ClassLabelConf, FlowConf, HashSplitConf


class TextFlowConf(FlowConf):
    """Text featurization as pyspark.ml stages: clean -> RegexTokenizer -> StopWordsRemover -> NGram ->
    HashingTF + IDF (tokens and n-grams) and Word2Vec -> one vector. A size of 0 turns a branch off."""

    kind: Literal["text"] = "text"
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
