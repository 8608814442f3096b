"""`steward bench video` runs end to end: a real uvicorn server, real aiortc peers in client processes, every
relay mode on the same stage, and forward's CPU set against both transcoding variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app

MODES = ("forward", "transcode", "transcode-per-subscriber")


@pytest.mark.slow
def test_the_video_benchmark_runs_every_mode_and_compares_them(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "video", "--rooms", "1", "--subscribers", "2", "--modes",
                                      ",".join(MODES), "--seconds", "2", "--warmup", "2", "--clients", "1",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [written] = list(tmp_path.glob("video-modes-*.json"))
    summary = json.loads(written.read_text())
    assert list(summary["modes"]) == list(MODES)
    for mode in MODES:
        [stage] = summary["modes"][mode]["stages"]
        assert (stage["rooms"], stage["subscriber_streams"]) == (1, 2)
        assert stage["fps_mean"] > 0 and stage["server_cpu_cores"] > 0  # frames went through the server
        assert f"| {mode} | 1 | 2 |" in result.output
    for row in summary["comparison"]:  # only stages where every mode held the fps floor are compared
        assert row["rooms"] == 1
        for key in ("forward_over_transcode_cpu_per_stream", "forward_over_transcode_per_subscriber_cpu_per_stream"):
            if key in row:
                assert 0 < row[key] < 1  # forwarding costs less than encoding, whatever the machine
