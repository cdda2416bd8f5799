"""The GPU check in one command: every GPU measurement dalidr needs, each step under its own
timeout, each result written the moment it exists.

A GPU machine is lent for 15 minutes in all, so this runs in at most 8 (`TOTAL_BUDGET_S`), in
this order, each step a subprocess killed (its whole process group) at its budget:

1. sanity: versions, GPU, driver (and the CUDA version it supports), cores; one JPEG decoded
   with `mixed` DALI; every operator of the GPU graphs has a GPU backend (`bench/gpu/sanity.py`);
2. pytest: `pytest -m gpu tests` (GPU replay against CPU replay for every op and recipe, the
   loader on the GPU, the teacher pass on the GPU: deterministic and agreeing with the CPU, the
   out-of-memory message) and the Triton kernels on CUDA against their references;
3. replay: `bench/replay.py --device gpu`, batch 256, 224 px, real-content JPEGs at ImageNet-like
   sizes made on the machine: RRC+RA/RE replay against the plain DALI ResNet-50 pipeline (GPU
   decode, RRC, flip, normalise) and a torchvision DataLoader, same threads;
4. teacher: `bench/teacher.py` on the GPU: a resnext101_32x8d ensemble (random weights), bf16,
   the full pass against the bare forward, fraction of bf16 peak, ImageNet+ in GPU-hours;
5. train_overhead: `bench/train_overhead.py` on the GPU: ResNet-50, bf16, channels_last,
   reinforced against plain loader step time;
6. agreement: `bench/gpu/agreement.py`: the stored targets against the teacher recomputed on the
   loader's GPU output (top-1 agreement, KL).

Budgets on an H100/H200 with 16 cores (seconds; each is the step's hard timeout). Estimated
from two things. (a) The fixed cost of each step, measured with the rehearsal on this project's
2-core AMD EPYC (`check.sh --device cpu --quick`, load ~3; under load ~8 about 2.8x these):
sanity 15.6, pytest 12.7, replay 17.8, teacher 11.8, train_overhead 12.1, agreement 12.3 s
(85 s in all). At those sizes the work is negligible: this is interpreter start and imports
(torch + DALI + timm: ~5 s of CPU per process), DALI graph building and model creation, which a
16-core host does in about half the time. (b) The GPU work at full size, from rates:
  sanity 40: Python, torch and DALI imports and CUDA start (~10 s), one mixed decode (nvJPEG
      start, ~2 s), nine GPU graphs defined but not built (~12 s on 2 slow cores, less here);
  pytest 110: collecting the suite (~10 s), 10 replay pipelines built once each (1-3 s apiece:
      RandAugment graphs dominate) and fed ~40 batches of 8, three 24-image teacher passes
      with resnet10t, the loader tests, ~60 Triton kernel cases (~0.5-1 s of compiling each);
  replay 80: 1024 JPEGs made (~8 s), 3 loaders x 4 rounds of (warm-up + 16 timed batches of 256)
      at thousands of images/s on the GPU, the torchvision loader's 16 workers at ~150
      images/s each being the slow part (~40 s), the sampler on 256k records (~5 s);
  teacher 85: 2 x resnext101_32x8d (66 GFLOPs a view for four, 33 for two) on 256 images x 8
      views = 2048 views a pass, 3 passes (one warm-up) and 2 x 8 bare-forward batches: under
      10 s of GPU work at 25-40 % of the bf16 peak; building the members (~2 s each, three times)
      and DALI's view pipeline (~3 s a pass) dominate; FLOPs counted on the meta device (~10 s);
  train_overhead 70: 1024 JPEGs and a store made (~15 s), ResNet-50 bf16 at batch 256 (~90 ms a
      step): 2 loaders x 2 rounds x 14 steps (~6 s) plus cuDNN's first-step autotuning;
  agreement 40: 256 JPEGs, a resnet50 teacher pass on 1024 views and one loader epoch (~20 s).
Sum 425 s; with the bundle's unpacking (check.sh, at most 40 s) the whole run stays under 8 min.

`--device cpu --quick` runs the same steps at the smallest sizes on the CPU: the rehearsal that
tests/test_gpu_check.py runs, so the script cannot rot unnoticed.

Results: `summary.json` (every step's status, seconds, budget, the pytest tally and each
benchmark's headline numbers, with the machine's description) and `check.log` (all output),
plus each step's JSON, go to `--results` (default bench/results/gpu-check) and to `$OUT` when
set, rewritten after every step, so a run cut off still returns what it measured.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.machine import describe_machine, summary

__all__ = ["Step", "TOTAL_BUDGET_S", "main", "parse_args", "plan_steps"]

_REPO = Path(__file__).resolve().parents[2]
TOTAL_BUDGET_S = 480.0  # the whole check, unpacking included (check.sh)
UNPACK_BUDGET_S = 40.0  # what check.sh allows the bundle's unpacking
MIN_STEP_S = 15.0  # a step is skipped rather than started with less time than this


class Device(enum.Enum):
    """Where the check runs."""

    GPU = "gpu"
    CPU = "cpu"  # the rehearsal


@dataclass(frozen=True)
class Step:
    """One step: commands run in turn under one timeout, and the JSON result it writes."""

    name: str
    # Hard timeout, seconds (the GPU budget; the CPU rehearsal scales it).
    budget_s: float
    commands: tuple[tuple[str, ...], ...]
    # File name of the step's JSON result under the results folder, if it writes one.
    result: str | None = None
    # Pulls the headline numbers out of the result JSON for summary.json.
    headline: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None,
                                                                         compare=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=[d.value for d in Device], default="gpu")
    parser.add_argument("--quick", action="store_true",
                        help="smallest sizes (the CPU rehearsal); the same steps")
    parser.add_argument("--results", type=Path, default=None,
                        help="results folder (default: bench/results/gpu-check[-rehearsal])")
    parser.add_argument("--steps", default=None,
                        help="comma-separated subset of the steps, in their order")
    parser.add_argument("--budget-scale", type=float, default=None,
                        help="multiply every budget (default: 1 on GPU, 3 for the rehearsal)")
    args = parser.parse_args(argv)
    # Seconds check.sh already spent (unpacking the bundle) count against the total budget.
    started = os.environ.get("GPU_CHECK_STARTED")
    args.elapsed = max(time.time() - float(started), 0.0) if started else 0.0
    args.device = Device(args.device)
    if args.results is None:
        name = "gpu-check" if args.device is Device.GPU else "gpu-check-rehearsal"
        args.results = _REPO / "bench" / "results" / name
    if args.budget_scale is None:
        args.budget_scale = 1.0 if args.device is Device.GPU else 3.0
    return args


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _replay_headline(r: dict[str, Any]) -> dict[str, Any]:
    return {"replay_images_per_s": _get(r, "results", "replay", "images_per_s"),
            "plain_dali_images_per_s": _get(r, "results", "plain_dali", "images_per_s"),
            "torchvision_images_per_s": _get(r, "results", "torchvision", "images_per_s"),
            "replay_vs_plain_dali": _get(r, "ratios", "replay_vs_plain_dali"),
            "replay_vs_torchvision": _get(r, "ratios", "replay_vs_torchvision")}


def _teacher_headline(r: dict[str, Any]) -> dict[str, Any]:
    projections = r.get("projections", {})
    return {"full_pass_views_per_s": _get(r, "results", "full_pass", "views_per_s"),
            "bare_forward_views_per_s": _get(r, "results", "bare_forward", "views_per_s"),
            "ratio_full_vs_bare": r.get("ratio_full_vs_bare"),
            "fraction_of_bf16_peak": _get(r, "results", "fraction_of_bf16_peak"),
            "imagenet_plus_h100_hours": {k: _get(v, "h100_hours")
                                         for k, v in projections.items()}}


def _train_headline(r: dict[str, Any]) -> dict[str, Any]:
    return {"plain_step_s": _get(r, "results", "plain_dali", "step_s"),
            "reinforced_step_s": _get(r, "results", "reinforced", "step_s"),
            "reinforced_over_plain": r.get("step_time_ratio_reinforced_over_plain"),
            "data_wait_reinforced": _get(r, "results", "reinforced", "data_wait_fraction")}


def _agreement_headline(r: dict[str, Any]) -> dict[str, Any]:
    return dict(r.get("results", {}))


def _sanity_headline(r: dict[str, Any]) -> dict[str, Any]:
    return {"driver_cuda": r.get("driver_cuda"), "decode": r.get("decode"),
            "gpu_ops_missing_backend": r.get("gpu_ops_missing_backend"),
            "passed": r.get("passed")}


def plan_steps(device: Device, quick: bool, results: Path, work: Path) -> list[Step]:
    """The steps, with their commands for `device` (GPU sizes, or the rehearsal's)."""
    py = sys.executable
    cores = str(os.cpu_count() or 1)
    gpu = device is Device.GPU
    corpus = str(work / "corpus")
    pytest = (py, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider")
    if gpu and not quick:
        replay = ("--device", "gpu", "--batch", "256", "--threads", cores, "--corpus", "1024",
                  "--slots", "2", "--warmup", "2", "--runs", "3", "--batches", "16",
                  "--sampler-records", "262144", "--sampler-runs", "1")
        teacher = ("--device", "cuda", "--teacher", "resnext101_32x8d,resnext101_32x8d",
                   "--images", "256", "--slots", "8", "--batch", "256", "--repeats", "2",
                   "--forward-iters", "8", "--compile", "off", "--threads", cores)
        train = ("--device", "cuda", "--model", "resnet50", "--size", "224", "--batch", "256",
                 "--images", "1024", "--iters", "10", "--warmup", "4", "--rounds", "2",
                 "--threads", cores)
        agreement = ("--device", "cuda", "--threads", cores)
    else:  # the same steps at the smallest sizes (the rehearsal, or a quick GPU smoke run)
        dev, tdev = ("gpu", "cuda") if gpu else ("cpu", "cpu")
        replay = ("--device", dev, "--batch", "8", "--threads", "2", "--corpus", "16",
                  "--slots", "1", "--warmup", "0", "--runs", "1", "--batches", "2",
                  "--sampler-records", "4096", "--sampler-runs", "1")
        teacher = ("--device", tdev, "--teacher", "resnet10t", "--teacher-size", "64",
                   "--recipe", "rrc", "--batch", "8", "--quick", "--compile", "off",
                   "--threads", "2")
        train = ("--device", tdev, "--model", "resnet10t", "--size", "32", "--batch", "8",
                 "--images", "16", "--iters", "2", "--warmup", "1", "--rounds", "1",
                 "--threads", "2", "--classes", "10")
        agreement = ("--device", tdev, "--quick", "--threads", "2")
    return [
        Step("sanity", 40, ((py, "bench/gpu/sanity.py", "--device", device.value, "--out",
                             str(results / "sanity.json")),), "sanity.json", _sanity_headline),
        Step("pytest", 110, ((*pytest, "-m", "gpu", "tests"),
                             (*pytest, "tests/kernels", "-k", "not under_interpreter"))),
        Step("replay", 80, ((py, "bench/replay.py", *replay, "--corpus-dir", corpus, "--out",
                             str(results / "replay.json")),), "replay.json", _replay_headline),
        Step("teacher", 85, ((py, "bench/teacher.py", *teacher, "--out",
                              str(results / "teacher.json")),), "teacher.json",
             _teacher_headline),
        Step("train_overhead", 70, ((py, "bench/train_overhead.py", *train, "--work",
                                     str(work / "train"), "--out",
                                     str(results / "train_overhead.json")),),
             "train_overhead.json", _train_headline),
        Step("agreement", 40, ((py, "bench/gpu/agreement.py", *agreement, "--out",
                                str(results / "agreement.json")),), "agreement.json",
             _agreement_headline),
    ]


class _Tee:
    """Appends lines to the log files and echoes them, from a reader thread."""

    def __init__(self, logs: list[Path]) -> None:
        self.files: list[IO[str]] = [open(p, "a", encoding="utf-8") for p in logs]  # noqa: SIM115

    def write(self, text: str) -> None:
        for f in self.files:
            f.write(text)
            f.flush()
        sys.stdout.write(text)
        sys.stdout.flush()

    def close(self) -> None:
        for f in self.files:
            f.close()


def _run(command: tuple[str, ...], timeout: float, tee: _Tee) -> tuple[int | None, str]:
    """Run one command in its own process group; (exit code or None if killed, its output)."""
    tee.write(f"$ {' '.join(command)}\n")
    proc = subprocess.Popen(command, cwd=_REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                [str(_REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
                                 "PYTHONUNBUFFERED": "1"})
    captured: list[str] = []
    original = tee.write

    def write(text: str) -> None:
        captured.append(text)
        original(text)

    reader = threading.Thread(target=_pump, args=(proc, write), daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        code = None
    reader.join(timeout=10)
    return code, "".join(captured)


def _pump(proc: subprocess.Popen[bytes], write: Callable[[str], None]) -> None:
    if proc.stdout is None:
        return
    for raw in iter(proc.stdout.readline, b""):
        write(raw.decode("utf-8", errors="replace"))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the step's process group (the process this check started), SIGKILL after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


_TALLY = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")
_SUMMARY_LINE = re.compile(r"\bin [\d.]+s\b")


def pytest_tally(output: str) -> dict[str, Any]:
    """Counts from pytest's final summary lines ("3 passed, 21 skipped in 5.03s"), summed over
    the step's pytest runs, and the FAILED/ERROR lines."""
    tally: dict[str, int] = {}
    for line in output.splitlines():
        if not _SUMMARY_LINE.search(line):
            continue
        for count, kind in _TALLY.findall(line):
            kind = "error" if kind.startswith("error") else kind
            tally[kind] = tally.get(kind, 0) + int(count)
    failures = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"counts": tally, "failures": failures[:50]}


class Reporter:
    """summary.json and check.log in the results folder and in $OUT, after every step."""

    def __init__(self, results: Path, out: Path | None, meta: dict[str, Any]) -> None:
        self.results, self.out = results, out
        self.summary: dict[str, Any] = {**meta, "steps": {}}
        for folder in filter(None, (results, out)):
            folder.mkdir(parents=True, exist_ok=True)
        self.tee = _Tee([folder / "check.log" for folder in filter(None, (results, out))])

    def record(self, step: Step, entry: dict[str, Any]) -> None:
        self.summary["steps"][step.name] = entry
        if step.result and (self.results / step.result).is_file() and self.out is not None:
            shutil.copy(self.results / step.result, self.out / step.result)
        self.flush()

    def flush(self) -> None:
        text = json.dumps(self.summary, indent=2) + "\n"
        for folder in filter(None, (self.results, self.out)):
            (folder / "summary.json").write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline = started + TOTAL_BUDGET_S * args.budget_scale - args.elapsed
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "check.log").write_text("")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "check.log").write_text("")
    machine = describe_machine()
    meta = {"check": "bench/gpu/check.py", "command": " ".join([sys.executable, *sys.argv]),
            "device": args.device.value, "quick": args.quick, "budget_scale": args.budget_scale,
            "total_budget_s": TOTAL_BUDGET_S * args.budget_scale,
            "bundle": os.environ.get("GPU_BUNDLE_ROUTE"), "unpack_s": args.elapsed,
            "machine": machine}
    reporter = Reporter(args.results, out, meta)
    reporter.tee.write(summary(machine) + "\n")
    work = Path(tempfile.mkdtemp(prefix="dalidr-gpu-check-"))
    steps = plan_steps(args.device, args.quick, args.results, work)
    if args.steps:
        wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {s.name for s in steps})
        if unknown:
            raise SystemExit(f"--steps: unknown {unknown}; valid: {[s.name for s in steps]}")
        steps = [s for s in steps if s.name in wanted]
    failed = []
    try:
        for step in steps:
            budget = step.budget_s * args.budget_scale
            left = deadline - time.perf_counter()
            entry: dict[str, Any] = {"budget_s": budget}
            if left < MIN_STEP_S:
                entry.update(status="skipped", reason=f"{left:.0f} s left of the total budget")
                reporter.record(step, entry)
                failed.append(step.name)
                continue
            timeout = min(budget, left)
            reporter.tee.write(f"\n=== {step.name} (timeout {timeout:.0f} s) ===\n")
            t0 = time.perf_counter()
            codes, output = [], ""
            for command in step.commands:
                code, text = _run(command, timeout - (time.perf_counter() - t0), reporter.tee)
                codes.append(code)
                output += text
                if code is None:
                    break
            seconds = time.perf_counter() - t0
            status = ("timeout" if None in codes else "ok" if all(c == 0 for c in codes)
                      else "failed")
            entry.update(status=status, seconds=round(seconds, 1), exit_codes=codes)
            if step.name == "pytest":
                entry["pytest"] = pytest_tally(output)
            result_file = args.results / step.result if step.result else None
            if result_file is not None and result_file.is_file() and step.headline:
                try:
                    entry["headline"] = step.headline(json.loads(result_file.read_text()))
                except (ValueError, OSError) as exc:
                    entry["headline"] = {"error": str(exc)}
            reporter.record(step, entry)
            reporter.tee.write(f"=== {step.name}: {status} in {seconds:.1f} s "
                               f"(budget {budget:.0f} s) ===\n")
            if status != "ok":
                failed.append(step.name)
    finally:
        reporter.summary["wall_s"] = round(time.perf_counter() - started + args.elapsed, 1)
        reporter.summary["failed_steps"] = failed
        reporter.flush()
        reporter.tee.write(f"\ncheck done in {reporter.summary['wall_s']} s; "
                           f"not ok: {failed or 'none'}; results in {args.results}"
                           f"{' and $OUT' if out else ''}\n")
        reporter.tee.close()
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
