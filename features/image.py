"""ImageDecoder: encoded image bytes (PNG, JPEG, ...) -> a fixed-shape float array in [0, 1], as a pyspark.ml stage.

Decoding, colour conversion and resizing happen in one function, `decode_image`, that the Spark stage (through a
pandas UDF) and the image model's pyfunc both call, so training and serving see identical pixels. The output is
row-major (height, width, channels) flattened to array<float>: what Petastorm and TensorFlow read; a TransformSpec
reshapes it. Bytes that do not decode give null (ingest already quarantined corrupt files; this is defence).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos")


def decode_image(data: bytes, height: int, width: int, channels: int = 1, resample: str = "bilinear",
                 normalize: bool = True) -> np.ndarray:
    """Decode `data` to a (height, width, channels) float32 array; values / 255 when `normalize`."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (width, height):
            img = img.resize((width, height), getattr(Image.Resampling, resample.upper()))
        arr = np.asarray(img, dtype=np.float32).reshape(height, width, channels)
    return arr / 255.0 if normalize else arr


class ImageDecoder(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """Decode, resize and normalize the image bytes in `inputCol` into array<float> `outputCol`."""

    height: Param[int] = Param(Params._dummy(), "height", "output height in pixels", TypeConverters.toInt)
    width: Param[int] = Param(Params._dummy(), "width", "output width in pixels", TypeConverters.toInt)
    channels: Param[int] = Param(Params._dummy(), "channels", "1 (grayscale) or 3 (RGB)", TypeConverters.toInt)
    resample: Param[str] = Param(Params._dummy(), "resample", f"resize filter, one of {RESAMPLE}",
                                 TypeConverters.toString)
    normalize: Param[bool] = Param(Params._dummy(), "normalize", "scale 0..255 to 0..1", TypeConverters.toBoolean)

    @keyword_only
    def __init__(self, *, inputCol: str = "content", outputCol: str = "image", height: int = 8, width: int = 8,
                 channels: int = 1, resample: str = "bilinear", normalize: bool = True) -> None:
        super().__init__()
        self._setDefault(inputCol="content", outputCol="image", height=8, width=8, channels=1,
                         resample="bilinear", normalize=True)
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCol: str | None = None, outputCol: str | None = None, height: int | None = None,
                  width: int | None = None, channels: int | None = None, resample: str | None = None,
                  normalize: bool | None = None) -> ImageDecoder:
        """Set any of the params; values are checked when the stage transforms."""
        return self._set(**self._input_kwargs)

    def setInputCol(self, value: str) -> ImageDecoder:
        return self._set(inputCol=value)

    def setOutputCol(self, value: str) -> ImageDecoder:
        return self._set(outputCol=value)

    def setHeight(self, value: int) -> ImageDecoder:
        return self._set(height=value)

    def setWidth(self, value: int) -> ImageDecoder:
        return self._set(width=value)

    def setChannels(self, value: int) -> ImageDecoder:
        return self._set(channels=value)

    def setResample(self, value: str) -> ImageDecoder:
        return self._set(resample=value)

    def setNormalize(self, value: bool) -> ImageDecoder:
        return self._set(normalize=value)

    def shape(self) -> tuple[int, int, int]:
        return (self.getOrDefault(self.height), self.getOrDefault(self.width), self.getOrDefault(self.channels))

    def _check(self) -> None:
        h, w, c = self.shape()
        if h < 1 or w < 1:
            raise ValueError(f"ImageDecoder: height and width must be >= 1, got {h}x{w}")
        if c not in (1, 3):
            raise ValueError("ImageDecoder: channels must be 1 or 3")
        if self.getOrDefault(self.resample) not in RESAMPLE:
            raise ValueError(f"ImageDecoder: resample must be one of {RESAMPLE}")

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._check()
        h, w, c = self.shape()
        resample, normalize = self.getOrDefault(self.resample), self.getOrDefault(self.normalize)

        @F.pandas_udf("array<float>")
        def decode(content: pd.Series) -> pd.Series:
            out = []
            for data in content:
                try:
                    out.append(decode_image(bytes(data), h, w, c, resample, normalize).ravel())
                except Exception:  # undecodable bytes: null, never a crash (ingest quarantines them first)
                    out.append(None)
            return pd.Series(out)

        return dataset.withColumn(self.getOutputCol(), decode(F.col(self.getInputCol())))
