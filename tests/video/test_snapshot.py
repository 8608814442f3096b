"""A decoded frame as a JPEG, from several threads at once."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import av
import numpy as np

from video.snapshot import encode_jpeg

# Two threads encoding one frame, as two snapshot requests within a moment do (they get the same frame).
RACE = textwrap.dedent("""
    import threading
    import av, numpy as np
    from video.snapshot import encode_jpeg
    rng = np.random.default_rng(1)
    for _ in range(60):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (720, 640), dtype=np.uint8), format="yuv420p")
        threads = [threading.Thread(target=lambda: [encode_jpeg(frame) for _ in range(3)], daemon=True)
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        if any(t.is_alive() for t in threads):
            raise SystemExit("an encode_jpeg thread is stuck")
    print("ok")
""")


def test_two_snapshots_of_one_frame_at_once_neither_crash_nor_hang() -> None:
    """Regression (review): PyAV's `reformat` ran the frame's one cached scaler in both threads without the GIL:
    the server process died (SIGSEGV) or a request never answered, within a few rounds."""
    done = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=240)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]


def test_the_jpeg_is_the_frame() -> None:
    frame = av.VideoFrame.from_ndarray(np.full((480, 640, 3), (200, 30, 30), dtype=np.uint8), format="rgb24")
    frame = frame.reformat(format="yuv420p")
    jpeg = encode_jpeg(frame)
    assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
    assert encode_jpeg(frame) is jpeg  # the same frame again (a second snapshot within a moment): not encoded twice
    decoded = next(av.open(io.BytesIO(jpeg), format="mjpeg").decode(video=0))
    assert (decoded.width, decoded.height) == (640, 480)
    red, green, blue = decoded.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
    assert red > 150 and green < 80 and blue < 80
