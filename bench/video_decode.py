"""Sampled-frame decoding with the frame pool vs decoding every frame and picking.

Clip: generated here (temp dir), 10 s, 30 fps, 640x480, H.264 (libx264, default settings unless
--gop is given; x264's default keyframe interval is 250 frames), moving shapes over a texture.
Eight frames are sampled uniformly (``num_frames=8``, first and last included).

What is timed (interleaved, --repeats times each, medians reported; wall and CPU time):

* episode, pooled: ``--lookups`` fetches of the same video's 8 frames through one fresh
  ``FramePool``. Default 8 = one GRPO group (VR-Thinker uses group 8): every rollout of the group
  builds its environment's frame pool for the same video pair. The first fetch decodes only the
  sampled frames (decord random access); the other 7 are cache hits.
* episode, baseline: the same fetches, each decoding every frame with PyAV (threaded decoder) and
  converting only the 8 picked frames to RGB -- a loader without random access or cache.
* uncached: one sampled decode (``read_video``, no pool) against one decode-all-and-pick. This is
  what random access alone buys. On this clip it is about 1x: with a 250-frame keyframe interval
  decord must still decode from frame 0 up to each sampled frame, so nearly the whole clip is
  decoded either way. Shorter keyframe intervals (--gop 30) raise it. The episode ratio therefore
  comes almost entirely from the cache and scales with --lookups (about 4x at --lookups 4).

The RESULT ratio is baseline episode / pooled episode (wall time). The machine this runs on may be
shared; the CPU-time ratios printed alongside are less sensitive to that.

    python bench/video_decode.py [--repeats 7] [--lookups 8] [--gop N]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from mmreward.cli import ArgParser, run
from mmreward.data.media import FramePool, read_video, sample_by_count

SECONDS, FPS, WIDTH, HEIGHT, NUM_FRAMES = 10, 30, 640, 480, 8


def make_clip(path: Path, gop: int | None) -> None:
    """Encode the clip frame by frame (never holding all 300 frames in memory)."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 60, (HEIGHT, WIDTH, 1), dtype=np.uint8)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    background = (np.stack([xx * 255 // WIDTH, yy * 255 // HEIGHT, np.full_like(xx, 128)], -1) // 2).astype(np.uint8) + texture
    options = {"g": str(gop)} if gop else {}
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(SECONDS * FPS):
            frame = background.copy()
            t = i / FPS
            for k, colour in enumerate([(255, 40, 40), (40, 255, 40), (40, 40, 255)]):
                cx = int(WIDTH / 2 + (WIDTH / 3) * np.sin(t * (1 + k) + k))
                cy = int(HEIGHT / 2 + (HEIGHT / 3) * np.cos(t * (1.5 + k)))
                frame[max(cy - 40, 0):cy + 40, max(cx - 40, 0):cx + 40] = colour
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def decode_all_and_pick(path: Path) -> np.ndarray:
    """Baseline: decode every frame in order, keep the 8 sampled ones."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        total = stream.frames
        wanted = sample_by_count(total, NUM_FRAMES).tolist()
        picked = {}
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                picked[i] = frame.to_ndarray(format="rgb24")
    return np.stack([picked[i] for i in wanted])


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all this process's threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = ArgParser(__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lookups", type=int, default=8, help="fetches of the video per episode (GRPO group size)")
    parser.add_argument("--gop", type=int, default=None, help="keyframe interval; default: libx264's own (250)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        make_clip(path, args.gop)

        # Same frames from both paths, or the comparison is meaningless.
        reference = decode_all_and_pick(path)
        sampled = read_video(path, num_frames=NUM_FRAMES)
        assert sampled.indices.tolist() == sample_by_count(SECONDS * FPS, NUM_FRAMES).tolist()
        diff = np.abs(sampled.frames.astype(np.int16) - reference.astype(np.int16)).mean()
        assert diff < 2.0, f"decoders disagree (mean abs diff {diff:.2f})"

        def pooled_episode() -> None:
            pool = FramePool()
            for _ in range(args.lookups):
                pool.get(path, num_frames=NUM_FRAMES)
            assert pool.stats.misses == 1 and pool.stats.hits == args.lookups - 1

        def baseline_episode() -> None:
            for _ in range(args.lookups):
                decode_all_and_pick(path)

        # Interleaved so that load from other processes hits every variant alike.
        uncached, decode_all, pooled, baseline = [], [], [], []
        for _ in range(args.repeats):
            uncached.append(timed(lambda: read_video(path, num_frames=NUM_FRAMES)))
            decode_all.append(timed(lambda: decode_all_and_pick(path)))
            pooled.append(timed(pooled_episode))
            baseline.append(timed(baseline_episode))

    def med(samples: list[tuple[float, float]], kind: int = 0) -> float:
        return statistics.median(x[kind] for x in samples)

    def row(label: str, samples: list[tuple[float, float]]) -> str:
        walls = [round(w * 1e3) for w, _ in samples]
        return f"{label:<44} wall median {med(samples) * 1e3:7.1f} ms {walls}  cpu median {med(samples, 1) * 1e3:7.1f} ms"

    gop = args.gop or "libx264 default (250)"
    print(f"clip: {SECONDS} s, {FPS} fps, {WIDTH}x{HEIGHT}, gop {gop}; {NUM_FRAMES} sampled frames; {args.repeats} repeats")
    print(row("decode all + pick (PyAV)", decode_all))
    print(row("sampled decode, uncached (read_video)", uncached))
    print(row(f"episode of {args.lookups} lookups, baseline", baseline))
    print(row(f"episode of {args.lookups} lookups, FramePool (1 miss)", pooled))
    print(f"uncached ratio (no pool): wall {med(decode_all) / med(uncached):.2f}, cpu {med(decode_all, 1) / med(uncached, 1):.2f}")
    print(f"episode ratio: wall {med(baseline) / med(pooled):.2f}, cpu {med(baseline, 1) / med(pooled, 1):.2f}")
    print(f"RESULT video_decode ratio={med(baseline) / med(pooled):.2f} target=5")

if __name__ == "__main__":
    run(main)
