"""`steward bench video` runs end to end: a real uvicorn server, real aiortc peers in client processes, every
relay mode on the same stages, and forward's CPU set against both transcoding variants, on average per subscriber
stream and for one more subscriber stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app
from video.bench import _marginal

MODES = ("forward", "transcode", "transcode-per-subscriber")


@pytest.mark.slow
def test_the_video_benchmark_runs_every_mode_and_compares_them(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "video", "--rooms", "1", "--subscribers", "1,2", "--modes",
                                      ",".join(MODES), "--seconds", "2", "--warmup", "2", "--clients", "1",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [written] = list(tmp_path.glob("video-modes-*.json"))
    summary = json.loads(written.read_text())
    assert list(summary["modes"]) == list(MODES)
    for mode in MODES:
        stages = summary["modes"][mode]["stages"]
        assert [(s["rooms"], s["subscribers_per_room"], s["subscriber_streams"]) for s in stages] == [(1, 1, 1),
                                                                                                       (1, 2, 2)]
        for stage in stages:
            assert stage["fps_mean"] > 0 and stage["server_cpu_cores"] > 0  # frames went through the server
        assert f"| {mode} | 1 | 1 | 1 |" in result.output and f"| {mode} | 1 | 2 | 2 |" in result.output
        marginal = summary["modes"][mode]["marginal_cpu_per_subscriber_stream"]
        if all(s["holds_floor"] for s in stages):
            assert [(m["rooms"], m["subscribers_per_room"]) for m in marginal] == [(1, [1, 2])]
    for row in summary["comparison"]:  # only stages where every mode held the fps floor are compared
        assert row["rooms"] == 1 and row["subscribers_per_room"] in (1, 2)
        for key in ("forward_over_transcode_cpu_per_stream", "forward_over_transcode_per_subscriber_cpu_per_stream"):
            if key in row:
                assert 0 < row[key] < 1  # forwarding costs less than encoding, whatever the machine
    per_subscriber = summary["modes"]["transcode-per-subscriber"]["marginal_cpu_per_subscriber_stream"]
    if per_subscriber:  # one more encoding costs a real share of a core (about 10 % at 640x480)
        assert per_subscriber[0]["pct_of_a_core"] > 0
    for row in summary["marginal_comparison"]:
        assert row["rooms"] == 1 and "forward_pct_of_a_core" in row
        assert f"{row['rooms']} room(s), one more subscriber stream: forward" in result.output


def _stage(rooms: int, k: int, cores: float, holds: bool = True) -> dict[str, object]:
    return {"rooms": rooms, "subscribers_per_room": k, "subscriber_streams": rooms * k, "server_cpu_cores": cores,
            "holds_floor": holds}


def test_the_marginal_cost_is_the_slope_over_streams_per_room_count() -> None:
    stages = [_stage(1, 1, 0.06), _stage(1, 3, 0.08), _stage(1, 6, 0.11),  # 0.01 core per stream: 1 %
              _stage(2, 1, 0.12), _stage(2, 6, 0.40, holds=False),  # starved: it says nothing about the cost
              _stage(4, 6, 0.9)]  # one number of subscribers: no slope
    assert _marginal(stages) == [{"rooms": 1, "subscribers_per_room": [1, 3, 6], "pct_of_a_core": 1.0}]


@pytest.mark.parametrize("subscribers", ["0", "16", "two", ","])
def test_a_bad_subscriber_count_is_refused_before_anything_runs(subscribers: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "video", "--subscribers", subscribers, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "subscribers per room between 1 and 15" in result.output
    assert not list(tmp_path.iterdir())
