"""Documents at production scale through the real job (local Ray, ray.data.llm, the vLLM CPU engine,
the tiny checkpoint): a 2,000-page PDF streams through with one segment per page, one source row and
a bounded decode worker; a folder of A4 pages scanned at 400 dpi (the size that used to get workers
killed for memory) goes through at 1120 soft tokens with no worker killed.

While a job runs, a sampler reads the resident memory of every process of this Ray session running
the decode stage (Ray titles a worker after the operator it runs: `ray::...FlatMap(decode_source)`),
and afterwards the session's raylet logs are searched for the memory monitor's kill report."""

from __future__ import annotations

import pathlib
import time

import pyarrow.dataset as pads
import pytest

from bench.sampling import Sampler
from jobs import samples
from jobs.pipeline import run_job
from jobs.spec import JobSpec

PDF_PAGES = 2000
SCANS = 24  # A4 at 400 dpi: 3307x4677, about 3.7 MB of JPEG each
OOM_REPORT = "were killed due to the node running low on memory"


class DecodeMemory(Sampler):
    """Peak and per-sample private RSS (MiB) of this session's processes running the decode stage."""

    def __init__(self, interval_s: float = 0.1):
        super().__init__(interval_s)
        self.samples: list[tuple[float, int, float]] = []  # (time, pid, rss MiB)

    def setup(self) -> None:
        self.raylet = _session_raylet()

    def sample(self) -> None:
        import psutil

        try:
            procs = self.raylet.children(recursive=True)
        except psutil.Error:
            return
        now = time.time()
        for proc in procs:
            try:
                if "decode_source" in " ".join(proc.cmdline()):
                    self.samples.append((now, proc.pid, _private_rss_mib(proc.pid)))
            except (psutil.Error, OSError):
                continue

    @property
    def peak_mib(self) -> float:
        assert self.samples, "the decode stage was never seen running"
        return max(rss for _, _, rss in self.samples)

    def timeline(self, points: int = 5) -> list[float]:
        """Largest decode-worker RSS at or before each of `points` evenly spaced times of the run."""
        assert self.samples, "the decode stage was never seen running"
        start, end = self.samples[0][0], self.samples[-1][0]
        out = []
        for i in range(points):
            at = start + (end - start) * i / (points - 1)
            near = [rss for t, _, rss in self.samples if abs(t - at) <= 0.5]
            out.append(max(near) if near else min(self.samples, key=lambda s: abs(s[0] - at))[2])
        return out


def _private_rss_mib(pid: int) -> float:
    """The process's own resident memory (RssAnon): its RSS also counts the pages of Ray's shared
    object store it has written blocks into, which are the store's, not the worker's."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise ProcessLookupError(pid)


def _session_dir() -> pathlib.Path:
    import ray

    return pathlib.Path(ray._private.worker.global_worker.node.get_session_dir_path())


def _session_raylet():
    """The raylet of the test session's Ray instance (its workers are its children)."""
    import psutil

    session = str(_session_dir())
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "raylet" in cmdline.split(" ")[0] and session in cmdline:
            return proc
    raise RuntimeError(f"no raylet for {session}")


def _oom_kills() -> int:
    return sum(log.read_text(errors="replace").count(OOM_REPORT)
               for log in (_session_dir() / "logs").glob("raylet*.out"))


def _run(inputs: pathlib.Path, out: pathlib.Path, model, image_tokens: int):
    spec = JobSpec(inputs=[str(inputs)], output={"uri": str(out), "max_new_tokens": 1},
                   engine={"model": str(model), "max_model_len": 4096, "image_tokens": image_tokens},
                   run={"error_threshold": 0.0, "run_date": "2026-11-22"})
    kills = _oom_kills()
    with DecodeMemory() as memory:
        summary = run_job(spec)
    sources = pads.dataset(out / "sources", format="parquet", partitioning="hive").to_table().to_pylist()
    segments = pads.dataset(out / "segments", format="parquet", partitioning="hive",
                            ).to_table(columns=["source_id", "segment_index", "page", "status"]).to_pylist()
    return summary, sources, segments, memory, _oom_kills() - kills


def test_a_2000_page_pdf_streams_with_a_bounded_decode_worker(tmp_path, tiny_checkpoint, ray_local):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "book.pdf").write_bytes(samples.text_pdf(PDF_PAGES))
    summary, sources, segments, memory, kills = _run(inputs, tmp_path / "out", tiny_checkpoint, image_tokens=70)

    assert len(sources) == 1
    (book,) = sources
    assert (book["status"], book["error"], book["num_segments"]) == ("ok", None, PDF_PAGES)
    assert sorted(s["page"] for s in segments) == list(range(1, PDF_PAGES + 1))
    assert {s["status"] for s in segments} == {"ok"} and summary["pages"] == PDF_PAGES
    assert kills == 0
    # Bounded memory whatever the page count: measured 120 / 222 / 317 / 368 / 410 MiB at 0/25/50/
    # 75/100 % of the stage's run (the libraries load with the first pages; later growth slows
    # quarter by quarter). A task that kept each page's 0.5 MB bitmap would need 1 GB more.
    timeline = memory.timeline()
    print("decode worker private RSS (MiB) at 0/25/50/75/100 % of the decode stage's run: "
          + " / ".join(f"{rss:.0f}" for rss in timeline) + f"; peak {memory.peak_mib:.0f}")
    assert memory.peak_mib < 768
    assert memory.peak_mib - timeline[2] < 250  # the second half adds little


def test_400_dpi_scans_at_1120_tokens_no_worker_killed_for_memory(tmp_path, tiny_checkpoint, ray_local):
    inputs = tmp_path / "in"
    inputs.mkdir()
    distinct = [samples.scan_page(400, seed=seed) for seed in range(3)]  # 4 s each to make: reuse
    for i in range(SCANS):
        (inputs / f"scan-{i:03d}.jpg").write_bytes(distinct[i % len(distinct)])
    summary, sources, segments, memory, kills = _run(inputs, tmp_path / "out", tiny_checkpoint, image_tokens=1120)

    assert len(sources) == SCANS and {s["status"] for s in sources} == {"ok"}
    assert len(segments) == SCANS and summary["pages"] == SCANS
    assert kills == 0
    print(f"decode worker peak private RSS at 400 dpi: {memory.peak_mib:.0f} MiB over {len(memory.samples)} samples")
    # One decoded 400 dpi page is 46 MB of RGB; a worker holds one page at a time (measured: 500 MiB
    # with the libraries).
    assert memory.peak_mib < 1024
