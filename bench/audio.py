"""Long recordings: accuracy, cut placement, audio sent and throughput of the segmentation modes.

    python -m bench.audio [--model PATH] [--minutes 2,3,5,10] [--seed 0] [--noise 0.003] [--json OUT]
    python -m bench.audio --compare-vad 0,0.003,0.01 [--minutes 2,3]    # detectors only, no engine

Synthesizes long recordings of spoken digit strings (espeak-ng; seeded; a new voice, variant, speed
and pitch per string: `model.checkpoints.demo_data.random_voice`) separated by pauses (85 % of 0.35-1.5 s,
15 % of 3-12 s), with light background noise. Every contender transcribes the same recordings on one
vLLM engine (the demo checkpoint by default: `model.checkpoints.demo.path()`), greedy:

* `separate`      each string as its own clip, cut from the recording at its true bounds with 0.2 s of
                  context (the oracle segmentation: the ceiling for the others)
* `fixed-30s`     today's fixed windows: 30 s with 2 s overlap, seams merged by repeated-word removal
* `fixed-window`  fixed windows of the checkpoint's declared window (2 s overlap)
* `vad-window`    VAD regions packed up to the checkpoint's window (the default for checkpoints that
                  declare no packing, e.g. the real model)
* `vad-utterance` one VAD region per chunk (the demo checkpoint's declared default: `audio_chunking`
                  in its processor_config.json)

Reported per contender: WER of the stitched transcript against the strings in order; cuts that fall
inside an utterance (chunk boundaries and joins between a chunk's spans; a cut at a silence gap counts
when either edge is inside); speech not sent (utterance audio outside every chunk); audio seconds sent
against speech seconds (utterance bounds where the synthesized signal is above 1e-3); and throughput:
recording seconds per wall second with all chunks of a recording submitted at once (as the batch job's
rows and the endpoint's concurrent chat calls are), segmentation and prompt building included, and
one chunk at a time for comparison. The engine's window is raised to 30 s for the run (a copy of the
checkpoint) so that the `fixed-30s` baseline can run; the VAD contenders cap chunks at the
checkpoint's own window.

Figures go into docs/benchmarks.md ("Long recordings"). Not a test: compare ratios of one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SR = 16_000


@dataclasses.dataclass
class Recording:
    name: str
    audio: np.ndarray
    utterances: list[tuple[int, int, str]]  # (start, end) samples of each string + its text

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SR

    @property
    def speech_s(self) -> float:
        return sum(e - s for s, e, _ in self.utterances) / SR

    @property
    def reference(self) -> str:
        return " ".join(t for _, _, t in self.utterances)


def _sound(rng: np.random.Generator) -> np.ndarray:
    """A non-speech sound: a beep (300-2000 Hz) or a burst of noise, 0.4-1.0 s, with soft edges."""
    n = int(rng.uniform(0.4, 1.0) * SR)
    t = np.arange(n) / SR
    if rng.random() < 0.5:
        sound = np.sin(2 * np.pi * rng.uniform(300, 2000) * t)
    else:
        sound = rng.normal(0.0, 0.5, n)
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)
    return (rng.uniform(0.05, 0.25) * sound * ramp).astype(np.float32)


def synthesize_recording(seed: int, seconds: float, noise: float, threads: int = 2,
                         sounds: float = 0.0) -> Recording:
    """`sounds`: share of the pauses longer than 1.5 s that hold a non-speech sound (beep, noise burst)."""
    from model.checkpoints import demo_data as dd

    rng = np.random.default_rng(seed)
    plan = []
    total = rng.uniform(0.5, 2.0)
    while total < seconds:
        text, voice = dd.random_digits(rng), dd.random_voice(rng)
        pause = rng.uniform(0.35, 1.5) if rng.random() < 0.85 else rng.uniform(3.0, 12.0)
        plan.append((text, voice, pause))
        total += 0.45 * len(text.split()) + pause  # rough; the real length follows synthesis
    with ThreadPoolExecutor(threads) as pool:  # espeak-ng runs as a subprocess
        clips = list(pool.map(lambda p: dd.trim_silence(dd.synthesize(p[0], **p[1])), plan))
    pieces = [np.zeros(int(rng.uniform(0.5, 2.0) * SR), np.float32)]
    at = pieces[0].size
    utterances = []
    for (text, _, pause), clip in zip(plan, clips):
        utterances.append((at, at + clip.size, text))
        gap = np.zeros(int(pause * SR), np.float32)
        if pause > 1.5 and rng.random() < sounds:
            sound = _sound(rng)
            offset = int((gap.size - sound.size) // 2)
            gap[offset:offset + sound.size] = sound
        pieces += [clip, gap]
        at += clip.size + gap.size
    audio = np.concatenate(pieces)
    if noise:
        audio = audio + rng.normal(0.0, noise, audio.shape).astype(np.float32)
    return Recording(f"rec{seed}-{seconds / 60:g}min", np.clip(audio, -1, 1).astype(np.float32), utterances)


# -- contenders -----------------------------------------------------------------------------------


def plans(recording: Recording, checkpoint) -> dict:
    from model.inputs import audio_chunks as ac

    window = checkpoint.window_s
    out = {
        "fixed-30s": ac.Plan(ac.fixed_chunks(len(recording.audio), max_samples=750 * 640, overlap_s=2.0),
                             len(recording.audio), len(recording.audio), "fixed"),
        "fixed-window": ac.plan_audio(recording.audio, ac.Segmentation(mode="fixed", overlap_s=min(2.0, window / 4)),
                                      checkpoint=checkpoint),
        "vad-window": ac.plan_audio(recording.audio, ac.Segmentation(pack="window"), checkpoint=checkpoint),
        "vad-utterance": ac.plan_audio(recording.audio, ac.Segmentation(pack="utterance"), checkpoint=checkpoint),
    }
    context = int(0.2 * SR)
    separate = [ac.Chunk(i, ((max(0, s - context), min(len(recording.audio), e + context)),))
                for i, (s, e, _) in enumerate(recording.utterances)]
    out["separate"] = ac.Plan(separate, len(recording.audio), int(recording.speech_s * SR), "vad")
    return out


def cut_stats(recording: Recording, plan) -> dict:
    """Cuts inside utterances, and utterance audio not sent.

    A span boundary strictly inside an utterance (10 ms tolerance) is a cut when the audio on its
    other side is sent too (by another span or chunk): the utterance was split between model calls
    or had audio removed from its middle. A boundary with nothing sent on the other side only
    trims the utterance's edge: that is counted as speech not sent instead."""
    tol = int(0.01 * SR)
    bounds = [(s + tol, e - tol) for s, e, _ in recording.utterances]
    starts = np.array([b[0] for b in bounds])
    spans = [span for c in plan.chunks for span in c.spans]
    covered = np.zeros(len(recording.audio) + 1, bool)
    for s, e in spans:
        covered[s:e] = True

    def inside(x: int) -> bool:
        i = int(np.searchsorted(starts, x, side="right")) - 1
        return i >= 0 and bounds[i][0] < x < bounds[i][1]

    cuts = sum(1 for s, _ in spans if inside(s) and covered[s - 1])
    cuts += sum(1 for _, e in spans if inside(e) and covered[e])
    missed = sum(int((~covered[s:e]).sum()) for s, e, _ in recording.utterances)
    return {"cuts_inside_speech": cuts, "speech_missed_s": round(missed / SR, 3)}


# -- detector choice (no engine) -----------------------------------------------------------------


def _frame_flags_energy(audio: np.ndarray) -> np.ndarray:
    """Energy detector: 32 ms frames louder than max(peak - 40 dB, noise floor + 10 dB)."""
    from model.inputs import vad

    n = len(audio) // vad.FRAME
    db = 10 * np.log10(np.mean(np.square(audio[: n * vad.FRAME].reshape(n, vad.FRAME)), axis=1) + 1e-10)
    threshold = max(db.max() - 40.0, np.percentile(db, 10) + 10.0)
    return (db > threshold).astype(np.float32)


def _frame_flags_webrtc(audio: np.ndarray, aggressiveness: int) -> np.ndarray:
    """WebRTC VAD on 30 ms frames, mapped onto the 32 ms grid (a frame is speech when any 30 ms
    frame centred in it is)."""
    import webrtcvad

    from model.inputs import vad

    detector = webrtcvad.Vad(aggressiveness)
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    step = 480
    flags = np.zeros(len(audio) // vad.FRAME + 1, np.float32)
    for start in range(0, len(pcm) - step + 1, step):
        if detector.is_speech(pcm[start:start + step].tobytes(), SR):
            flags[(start + step // 2) // vad.FRAME] = 1.0
    return flags


def _energy(audio: np.ndarray) -> np.ndarray:
    """RMS per 10 ms, as `model.inputs.audio_chunks.plan_recording` keeps it."""
    from model.inputs import audio_chunks as ac

    n = len(audio) // ac.ENERGY_HOP
    return np.sqrt(np.mean(np.square(audio[: n * ac.ENERGY_HOP].reshape(n, ac.ENERGY_HOP)), axis=1))


def decode_cost(recordings: list[Recording]) -> dict:
    """CPU-seconds per audio hour of one `model.inputs.media.iter_audio` pass (the batch job makes two)."""
    import io

    import soundfile as sf
    import soxr

    from model.inputs import media

    out = {}
    for label, rate, channels, fmt in (("flac-16k-mono", 16000, 1, "FLAC"), ("flac-44k-stereo", 44100, 2, "FLAC"),
                                       ("mp3-44k-stereo", 44100, 2, "MP3")):
        cpu = seconds = 0.0
        for rec in recordings:
            audio = rec.audio if rate == SR else soxr.resample(rec.audio, SR, rate).astype(np.float32)
            if channels == 2:
                audio = np.stack([audio, audio], axis=1)
            buffer = io.BytesIO()
            sf.write(buffer, audio, rate, format=fmt)
            started = time.process_time()
            for _ in media.iter_audio(buffer.getvalue()):
                pass
            cpu += time.process_time() - started
            seconds += rec.duration_s
        out[label] = round(cpu / seconds * 3600, 1)
        print(f"  decode {label:16s} {out[label]:6.1f} CPU-s per audio hour per pass", flush=True)
    return out


def compare_detectors(recordings: list[Recording]) -> dict:
    """Silero (the project's) against WebRTC VAD and an energy detector: same post-processing
    (`model.inputs.vad.speech_regions` on each detector's 32 ms decisions, then
    `model.inputs.audio_chunks.confirm_pauses`), one region per chunk.
    WebRTC needs `pip install webrtcvad-wheels` (not a project dependency); skipped without it."""
    from model.inputs import audio_chunks as ac
    from model.inputs import vad

    detectors = {"silero": None, "energy": _frame_flags_energy}
    try:
        import webrtcvad  # noqa: F401

        for level in (1, 2, 3):
            detectors[f"webrtc-{level}"] = lambda a, level=level: _frame_flags_webrtc(a, level)
    except ImportError:
        print("webrtcvad-wheels is not installed: WebRTC VAD skipped")
    out = {}
    for name, flags_of in detectors.items():
        cuts = missed = sent = speech = seconds = cpu = false = 0.0
        for rec in recordings:
            started = time.process_time()
            if flags_of is None:
                detector = vad.SpeechDetector()
                detector.feed(rec.audio)
                probs = detector.finish()
            else:
                probs = flags_of(rec.audio)
            regions = ac.confirm_pauses(vad.speech_regions(probs, len(rec.audio)), _energy(rec.audio))
            cpu += time.process_time() - started
            plan = ac.Plan([ac.Chunk(i, (r,)) for i, r in enumerate(regions)], len(rec.audio), 0, "vad")
            stats = cut_stats(rec, plan)
            false += sum(1 for a, b in regions if not any(e > a and s < b for s, e, _ in rec.utterances))
            cuts += stats["cuts_inside_speech"]
            missed += stats["speech_missed_s"]
            sent += plan.sent_s
            speech += rec.speech_s
            seconds += rec.duration_s
        out[name] = {"cuts_inside_speech": int(cuts), "speech_missed_s": round(missed, 2), "false_regions": int(false),
                     "sent_over_speech": round(sent / speech, 3), "cpu_s_per_audio_hour": round(cpu / seconds * 3600, 1)}
        print(f"  {name:9s} cuts in speech {int(cuts):3d}  missed {missed:6.2f} s  regions without speech {int(false):3d}  "
              f"sent/speech {sent / speech:.3f}  "
              f"{out[name]['cpu_s_per_audio_hour']:6.1f} CPU-s per audio hour", flush=True)
    return out


def transcribe(llm, params, audio: np.ndarray, plan, parallel: bool) -> tuple[list[str], float]:
    from model.inputs import audio_chunks as ac
    from model.inputs import prompts

    pieces = ac.split_audio(audio, plan)
    started = time.perf_counter()
    conversations = [prompts.messages_for_item("transcribe", "audio", audio=samples) for _, samples in pieces]
    if parallel:
        outs = llm.chat(conversations, params, chat_template_content_format="openai", use_tqdm=False)
    else:
        outs = [llm.chat([c], params, chat_template_content_format="openai", use_tqdm=False)[0] for c in conversations]
    return [o.outputs[0].text for o in outs], time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint (default: the demo checkpoint)")
    p.add_argument("--minutes", default="2,3,5,10", help="recording lengths, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.003, help="background noise sigma")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--contenders", default="separate,fixed-30s,fixed-window,vad-window,vad-utterance")
    p.add_argument("--sequential", action="store_true", help="also time one chunk at a time")
    p.add_argument("--window-frames", type=int, help="override the checkpoint's declared window (40 ms frames)")
    p.add_argument("--compare-vad", metavar="NOISES",
                   help="only compare speech detectors (no engine) at these noise levels, e.g. 0,0.003,0.01")
    p.add_argument("--sounds", type=float, default=0.0,
                   help="share of long pauses holding a non-speech sound (beep or noise burst)")
    p.add_argument("--json", type=pathlib.Path)
    args = p.parse_args(argv)
    if args.compare_vad:
        report = {}
        for noise in map(float, args.compare_vad.split(",")):
            print(f"== detectors, noise {noise} ==")
            recs = [synthesize_recording(args.seed + i, float(m) * 60, noise, sounds=args.sounds)
                    for i, m in enumerate(args.minutes.split(","))]
            report[str(noise)] = compare_detectors(recs)
        report["decode"] = decode_cost(recs)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return 0

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from model.checkpoints import demo, demo_data
    from model.inputs import audio_chunks as ac

    model = pathlib.Path(args.model) if args.model else demo.path()
    declared = ac.checkpoint_audio(model)
    checkpoint = ac.CheckpointAudio(args.window_frames or declared.frames, declared.pack)
    frames = checkpoint.frames
    contenders = args.contenders.split(",")

    started = time.perf_counter()
    recordings = [synthesize_recording(args.seed + i, float(m) * 60, args.noise, sounds=args.sounds)
                  for i, m in enumerate(args.minutes.split(","))]
    synth_s = time.perf_counter() - started

    # The engine gets a 30 s window so that today's baseline runs; the VAD modes cap at `frames`.
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-audio-"))
    engine_ckpt = work / "checkpoint"
    shutil.copytree(model, engine_ckpt)
    proc = json.loads((engine_ckpt / "processor_config.json").read_text())
    proc["audio_seq_length"] = max(750, frames)
    (engine_ckpt / "processor_config.json").write_text(json.dumps(proc, indent=2))

    from vllm import LLM, SamplingParams

    from model.engine import EngineConfig

    settings = EngineConfig(model=str(engine_ckpt), max_model_len=2048, max_images_per_prompt=1,
                              max_audios_per_prompt=1, max_num_seqs=64)
    settings.apply_env()
    llm = LLM(**settings.vllm_kwargs())
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    llm.chat([[{"role": "user", "content": "hi"}]], params, use_tqdm=False)  # warm-up

    results: dict = {"model": str(model), "window_s": ac.window_seconds(frames), "noise": args.noise,
                     "synthesis_s": round(synth_s, 1), "recordings": [], "contenders": {}}
    totals = {c: {"errors": 0, "words": 0, "cuts": 0, "missed_s": 0.0, "sent_s": 0.0, "duration_s": 0.0,
                  "wall_s": 0.0, "seq_wall_s": 0.0, "plan_s": 0.0, "chunks": 0} for c in contenders}
    speech_s = 0.0
    for rec in recordings:
        speech_s += rec.speech_s
        entry = {"name": rec.name, "duration_s": round(rec.duration_s, 1), "speech_s": round(rec.speech_s, 1),
                 "strings": len(rec.utterances)}
        t0 = time.perf_counter()
        all_plans = plans(rec, checkpoint)
        plan_s = (time.perf_counter() - t0)
        for name in contenders:
            plan = all_plans[name]
            t0 = time.perf_counter()
            if name.startswith("vad"):  # planning time of this contender alone (VAD pass)
                ac.plan_audio(rec.audio, ac.Segmentation(pack=name.split("-")[1]), checkpoint=checkpoint)
            this_plan_s = time.perf_counter() - t0
            texts, wall = transcribe(llm, params, rec.audio, plan, parallel=True)
            text, _ = ac.stitch(plan.chunks, texts)
            ref = rec.reference.split()
            errors = demo_data.edit_distance(ref, text.split())
            stats = cut_stats(rec, plan)
            row = dict(chunks=len(plan.chunks), wer=round(errors / len(ref), 4), sent_s=round(plan.sent_s, 1),
                       wall_s=round(wall + this_plan_s, 2), **stats)
            if args.sequential:
                _, seq_wall = transcribe(llm, params, rec.audio, plan, parallel=False)
                row["seq_wall_s"] = round(seq_wall + this_plan_s, 2)
                totals[name]["seq_wall_s"] += seq_wall + this_plan_s
            entry[name] = row
            t = totals[name]
            t["errors"] += errors
            t["words"] += len(ref)
            t["cuts"] += stats["cuts_inside_speech"]
            t["missed_s"] += stats["speech_missed_s"]
            t["sent_s"] += plan.sent_s
            t["duration_s"] += rec.duration_s
            t["wall_s"] += wall + this_plan_s
            t["plan_s"] += this_plan_s
            t["chunks"] += len(plan.chunks)
            print(f"{rec.name} {name:14s} chunks {len(plan.chunks):4d}  WER {row['wer']:.3f}  "
                  f"cuts in speech {stats['cuts_inside_speech']:3d}  missed {stats['speech_missed_s']:.2f} s  "
                  f"sent {plan.sent_s:6.1f} s / speech {rec.speech_s:6.1f} s  wall {row['wall_s']:.1f} s", flush=True)
        entry["plan_all_s"] = round(plan_s, 2)
        results["recordings"].append(entry)

    print(f"\n== bench.audio: {len(recordings)} recordings, {sum(r.duration_s for r in recordings) / 60:.1f} min, "
          f"speech {speech_s / 60:.1f} min, window {ac.window_seconds(frames):g} s, noise {args.noise} ==")
    base = totals.get("fixed-30s")
    for name, t in totals.items():
        summary = {
            "wer": round(t["errors"] / max(t["words"], 1), 4),
            "cuts_inside_speech": t["cuts"],
            "speech_missed_s": round(t["missed_s"], 2),
            "sent_over_speech": round(t["sent_s"] / speech_s, 3),
            "chunks": t["chunks"],
            "audio_s_per_s": round(t["duration_s"] / t["wall_s"], 1),
            "vad_cpu_s_per_audio_hour": round(t["plan_s"] / t["duration_s"] * 3600, 1) if t["plan_s"] else None,
        }
        if args.sequential:
            summary["audio_s_per_s_sequential"] = round(t["duration_s"] / t["seq_wall_s"], 1)
        if base:
            summary["throughput_vs_fixed_30s"] = round(base["wall_s"] / t["wall_s"], 2)
        results["contenders"][name] = summary
        print(f"{name:14s} WER {summary['wer']:.3f}  cuts in speech {summary['cuts_inside_speech']:3d}  "
              f"missed {summary['speech_missed_s']:.2f} s  sent/speech {summary['sent_over_speech']:.3f}  "
              f"chunks {summary['chunks']:4d}  {summary['audio_s_per_s']:.1f} audio-s/s"
              + (f" ({summary['throughput_vs_fixed_30s']:.2f}x fixed-30s)" if base else "")
              + (f", sequential {summary['audio_s_per_s_sequential']:.1f}" if args.sequential else ""))
    if "separate" in totals and "vad-window" in totals:
        sep = results["contenders"]["separate"]["wer"]
        results["wer_ratio_vad_window_vs_separate"] = (
            round(results["contenders"]["vad-window"]["wer"] / sep, 2) if sep else None)
    llm.llm_engine.engine_core.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
