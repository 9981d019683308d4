"""The image flow's `flow:` section: how image bytes become the model's pixel arrays, and the split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.core.config import FlowConf, HashSplitConf


class ImageFlowConf(FlowConf):
    """Image featurization: bytes -> decoded, resized, normalized (height, width, channels) float array."""

    kind: Literal["image"] = "image"
    key: str = "path"
    content_column: str = "content"
    label_column: str = "label"  # the bronze label (folder name); its distinct values, sorted, are the classes
    height: int = Field(default=8, ge=1)
    width: int = Field(default=8, ge=1)
    channels: Literal[1, 3] = 1
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    normalize: bool = True
    split: HashSplitConf = HashSplitConf()
    grid_per_class: int = Field(default=8, ge=1)  # images per class in the sample grid PNG
