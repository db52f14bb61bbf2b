"""Write rendered episodes as H.264 MP4 through PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float = 30.0) -> Path:
    """Encode uint8 RGB frames [H, W, 3] (all the same even size) to `path`; return it."""
    if len(frames) == 0:
        raise ValueError(f"{path}: no frames to write")
    height, width = frames[0].shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"{path}: H.264 with yuv420p needs even frame sizes, got {width}x{height}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise ValueError(f"{path}: frames must all be uint8 [{height}, {width}, 3], got {frame.dtype} {frame.shape}")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return out
