"""The `steward bench` group: each package registers its benchmark command here (results in bench/results/)."""

from __future__ import annotations

import typer

from speech.bench import bench_speech
from sync.bench import bench_sync
from sync.load import bench_load
from video.bench import bench_video

bench_app = typer.Typer(help="Benchmarks; each writes its results JSON into bench/results/.", no_args_is_help=True)
bench_app.command("speech")(bench_speech)
bench_app.command("video")(bench_video)
bench_app.command("sync")(bench_sync)
bench_app.command("load")(bench_load)
