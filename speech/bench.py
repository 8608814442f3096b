"""`steward bench speech --set DIR`: accuracy (CER), speed (RTF) and peak memory per engine and configuration.

A set is a directory of recordings plus `transcripts.json` (`{"clip id": "reference text"}`, the clip id
being the file name without extension). Recordings without a reference (a long call, say) are timed but
not scored. Each configuration runs in a fresh process, so that its peak memory is its own.

Two CERs per configuration, both pooled over the set (edits / reference characters):
- `cer`: as the issue defines it, after Simplified conversion and punctuation removal only;
- `cer_num`: the same after every numeral on both sides is written as digits (cn2an), the symmetric text
  normalisation Chinese ASR evaluations apply (WeNet, SpeechIO), so that 五零一室 and 501室 score alike.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from api.bench_options import usage_error, writable_directory

AUDIO_SUFFIXES = {".wav", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".amr", ".webm", ".flac"}


@dataclass(frozen=True)
class BenchConfig:
    name: str
    engine: str
    compute_type: str
    beam_size: int
    glossary: bool
    description: str


CONFIGS = {c.name: c for c in (
    BenchConfig("fw-int8-plain", "faster-whisper", "int8", 5, False, "faster-whisper int8, beam 5, no glossary"),
    BenchConfig("fw-int8-glossary", "faster-whisper", "int8", 5, True,
                "faster-whisper int8, beam 5, glossary prompt + correction (the service default)"),
    BenchConfig("fw-int8-glossary-beam1", "faster-whisper", "int8", 1, True, "as the default, greedy decoding"),
    BenchConfig("fw-fp32-glossary", "faster-whisper", "float32", 5, True,
                "faster-whisper float32 (no int8 quantization), beam 5, glossary prompt + correction"),
    BenchConfig("ow-fp32-glossary", "openai-whisper", "float32", 5, True,
                "openai-whisper fp32, beam 5, glossary prompt + correction"),
    BenchConfig("ow-fp32-glossary-beam1", "openai-whisper", "float32", 1, True, "openai-whisper, greedy decoding"),
)}
SCORING = {
    "cer": "character error rate after NFKC, OpenCC t2s, punctuation and space removal, lower case "
           "(the issue's definition); edits / reference characters, pooled over the scored clips",
    "cer_num": "the same after cn2an.transform(text, 'cn2an') on reference and hypothesis alike: every Chinese "
               "numeral as digits (五零一室 -> 501室, 十一月 -> 11月)",
}
DEFAULT_CONFIGS = ("fw-int8-plain", "fw-int8-glossary", "ow-fp32-glossary")


def load_set(directory: Path) -> tuple[dict[str, str], dict[str, Path]]:
    """The references and the recordings of a benchmark set."""
    refs_file = directory / "transcripts.json"
    if not refs_file.is_file():
        raise ValueError(f"{directory} has no transcripts.json")
    try:
        references = json.loads(refs_file.read_text("utf-8"))
        audio = {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES}
    except OSError as exc:
        raise ValueError(f"cannot read the set {directory}: {exc}") from exc
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ValueError(f"{refs_file} is not UTF-8 JSON: {exc}") from exc
    # Checked here, in the parent: a list or a number would fail only inside each configuration's run.
    if not isinstance(references, dict) or not all(isinstance(text, str) for text in references.values()):
        raise ValueError(f'{refs_file} must be a JSON object of clip id to reference text, '
                         f'like {{"leak_report": "供暖管家您好"}}')
    missing = sorted(set(references) - set(audio))
    if missing:
        raise ValueError(f"no recording for the references {missing} in {directory}")
    return references, audio


def run_config(config: BenchConfig, directory: Path, data_dir: Path) -> dict[str, Any]:
    """Transcribe the set with one configuration (in this process) and score it."""
    from api.settings import Settings
    from speech.audio import SAMPLE_RATE, decode_audio
    from speech.pipeline import build_pipeline
    from speech.text import cer, edit_distance, normalize_for_cer

    references, recordings = load_set(directory)
    settings = Settings(data_dir=data_dir)
    started = time.perf_counter()
    pipeline = build_pipeline(settings, engine=config.engine, compute_type=config.compute_type,
                              beam_size=config.beam_size, use_glossary=config.glossary)
    load_s = time.perf_counter() - started
    clips, unscored = [], []
    totals = {"chars": 0, "edits": 0, "edits_num": 0, "chars_num": 0}
    for clip_id, path in recordings.items():
        audio = decode_audio(path)
        started = time.perf_counter()
        transcript = pipeline.run(audio)
        wall = time.perf_counter() - started
        entry: dict[str, Any] = {"id": clip_id, "duration": round(len(audio) / SAMPLE_RATE, 2),
                                 "wall_s": round(wall, 3), "text": transcript.text}
        if clip_id in references:
            ref = references[clip_id]
            for key, numbers in (("", False), ("_num", True)):
                r = normalize_for_cer(ref, numbers=numbers)
                h = normalize_for_cer(transcript.text, numbers=numbers)
                totals[f"edits{key}"] += edit_distance(r, h)
                totals[f"chars{key}"] += len(r)
            entry |= {"reference": ref, "cer": round(cer(ref, transcript.text), 4),
                      "cer_num": round(cer(ref, transcript.text, numbers=True), 4)}
            clips.append(entry)
        else:
            entry["rtf"] = round(wall / max(entry["duration"], 1e-9), 3)
            unscored.append(entry)
    pipeline.close()
    scored_audio = sum(c["duration"] for c in clips)
    scored_wall = sum(c["wall_s"] for c in clips)
    all_audio = scored_audio + sum(u["duration"] for u in unscored)
    all_wall = scored_wall + sum(u["wall_s"] for u in unscored)
    return asdict(config) | {
        "model": pipeline.model, "threads": settings.whisper_threads or len(os.sched_getaffinity(0)),
        "load_s": round(load_s, 2),
        "cer": round(totals["edits"] / max(totals["chars"], 1), 4),
        "cer_num": round(totals["edits_num"] / max(totals["chars_num"], 1), 4),
        "rtf": round(all_wall / max(all_audio, 1e-9), 3),
        "rtf_scored": round(scored_wall / max(scored_audio, 1e-9), 3),
        "audio_s": round(all_audio, 1), "wall_s": round(all_wall, 1),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "clips": clips, "unscored": unscored,
    }


def _child(config: BenchConfig, directory: Path, data_dir: Path, conn: Any) -> None:
    try:
        conn.send(run_config(config, directory, data_dir))
    except Exception as exc:  # reported to the parent, which prints it with the others
        conn.send({"name": config.name, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_bench(directory: Path, *, configs: list[BenchConfig], data_dir: Path) -> dict[str, Any]:
    """Every configuration, each in a fresh process; the summary that goes to bench/results."""
    context = multiprocessing.get_context("spawn")
    results = []
    for config in configs:
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_child, args=(config, directory, data_dir, sender))
        process.start()
        sender.close()
        try:
            results.append(receiver.recv())
        except EOFError:
            results.append({"name": config.name, "error": "the benchmark process died"})
        process.join()
    summary: dict[str, Any] = {
        "benchmark": "speech", "set": str(directory), "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "python": platform.python_version()},
        "scoring": SCORING, "results": results,
    }
    summary |= speedups(results)
    return summary


def speedups(results: list[dict[str, Any]]) -> dict[str, float]:
    """openai-whisper's RTF over faster-whisper's, with the glossary, same beam: faster-whisper as the service
    runs it (int8) at beam 5 and 1, and float32 (no quantization) at beam 5, where they were run."""
    out: dict[str, float] = {}
    pairs = (("speedup_faster_over_openai", "int8", 5), ("speedup_faster_over_openai_beam1", "int8", 1),
             ("speedup_faster_fp32_over_openai", "float32", 5))
    for key, compute_type, beam in pairs:
        rtf = {r["engine"]: r["rtf"] for r in results if "rtf" in r and r.get("glossary") and r["beam_size"] == beam
               and (r["engine"] == "openai-whisper" or r["compute_type"] == compute_type)}
        if {"faster-whisper", "openai-whisper"} <= rtf.keys():
            out[key] = round(rtf["openai-whisper"] / rtf["faster-whisper"], 2)
    return out


def format_table(summary: dict[str, Any]) -> str:
    """The results as a Markdown table (what README's table is copied from)."""
    lines = ["| configuration | engine | CER (raw) | CER (numbers normalised) | RTF | load s | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for r in summary["results"]:
        if "error" in r:
            lines.append(f"| {r['name']} | error: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['engine']} {r['compute_type']} beam {r['beam_size']} | {r['cer']:.3f} | "
                     f"{r['cer_num']:.3f} | {r['rtf']:.3f} | {r['load_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    for key, what in (("speedup_faster_over_openai", "int8, beam 5"), ("speedup_faster_over_openai_beam1",
                                                                     "int8, beam 1"),
                      ("speedup_faster_fp32_over_openai", "float32, beam 5")):
        if key in summary:
            lines.append(f"\nfaster-whisper is {summary[key]}x faster than openai-whisper, {what} "
                         f"({summary['machine']['cpus']} cores).")
    return "\n".join(lines)


def bench_speech(
    set_dir: Annotated[Path, typer.Option("--set", help="Directory of recordings and transcripts.json.",
                                          exists=True, file_okay=False)],
    config: Annotated[list[str] | None, typer.Option(
        help=f"Configuration to run (repeatable; default: {', '.join(DEFAULT_CONFIGS)}). "
             f"Known: {', '.join(CONFIGS)}.")] = None,
    out: Annotated[Path, typer.Option(help="Where the results JSON goes.")] = Path("bench/results"),
) -> None:
    """Speech accuracy and speed per engine and configuration; results JSON into bench/results/."""
    from api.settings import describe_problem, get_settings

    names = config or list(DEFAULT_CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise usage_error(f"--config: unknown configuration {unknown}; known: {', '.join(CONFIGS)}")
    try:
        load_set(set_dir)
    except ValueError as exc:
        raise usage_error(f"--set: {exc}") from exc
    try:
        settings = get_settings()
    except (ValueError, OSError) as exc:  # as every other command: one line, not a traceback
        why = describe_problem(exc) if isinstance(exc, ValueError) else f"cannot read {exc.filename}: {exc.strerror}"
        typer.secho(f"Configuration error: {why}", fg="red", err=True)
        raise typer.Exit(2) from exc
    writable_directory(out)
    summary = run_bench(set_dir.resolve(), configs=[CONFIGS[n] for n in names], data_dir=settings.data_dir)
    path = out / f"speech-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", "utf-8")
    typer.echo(format_table(summary))
    typer.echo(f"\nresults: {path}")
    if any("error" in r for r in summary["results"]):
        raise typer.Exit(1)
