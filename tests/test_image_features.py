"""ImageDecoder: exact pixels on tiny known images, resize, RGB, bad bytes, save/load round trip."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyspark.sql import SparkSession

from features.image import ImageDecoder, decode_image


def _png(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


TINY = np.array([[0, 51], [102, 255]], dtype=np.uint8)  # 2x2 grayscale with known values


@pytest.mark.fast
def test_decode_exact_and_resize() -> None:
    out = decode_image(_png(TINY, "L"), 2, 2)
    assert out.shape == (2, 2, 1) and out.dtype == np.float32
    assert out.ravel().tolist() == pytest.approx([0.0, 0.2, 0.4, 1.0])
    up = decode_image(_png(TINY, "L"), 4, 4, resample="nearest", normalize=False)[..., 0]
    assert up.tolist() == [[0, 0, 51, 51], [0, 0, 51, 51], [102, 102, 255, 255], [102, 102, 255, 255]]
    down = decode_image(_png(TINY, "L"), 1, 1, resample="bilinear", normalize=False)
    assert down.ravel().tolist() == [pytest.approx((0 + 51 + 102 + 255) / 4, abs=1)]
    rgb = decode_image(_png(np.stack([TINY, TINY * 0, TINY * 0], axis=-1), "RGB"), 2, 2, channels=3)
    assert rgb[1, 1].tolist() == [1.0, 0.0, 0.0]
    assert decode_image(_png(np.stack([TINY] * 3, axis=-1), "RGB"), 2, 2, channels=1)[1, 1, 0] == 1.0


def test_stage_on_spark_and_round_trip(spark: SparkSession, tmp_path: Path) -> None:
    df = spark.createDataFrame([(1, _png(TINY, "L")), (2, b"not an image"), (3, None)], "id int, content binary")
    stage = ImageDecoder(height=2, width=2)
    rows = {r.id: r.image for r in stage.transform(df).collect()}
    assert rows[1] == pytest.approx([0.0, 0.2, 0.4, 1.0]) and rows[2] is None and rows[3] is None
    stage.write().overwrite().save(str(tmp_path / "decoder"))
    loaded = ImageDecoder.load(str(tmp_path / "decoder"))
    assert loaded.shape() == (2, 2, 1) and loaded.getOrDefault(loaded.resample) == "bilinear"
    assert loaded.transform(df).filter("id = 1").first().image == pytest.approx(rows[1])
    with pytest.raises(ValueError, match="channels"):  # params are checked when the stage transforms
        ImageDecoder(channels=2).transform(df)
