"""The fault matrix: damaged datasets, suites, devices, output folders and run folders, tried through the
command line as a user would. Every refusal is exit 2 with exactly one line of error and no traceback, and
leaves the run folder as it was (records included); damaged records give a warning and a completed run.

Most cases call the CLI's entry point in this process (torch is imported once); the faults that need a
second process (two writers, kill -9, SIGINT and SIGTERM) run ``bench`` in subprocesses.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from anobench import runner
from anobench.cli import main
from anobench.datasets.synthetic import SynthSpec, write_dataset
from anobench.records import latest_by_cell, read_records
from anobench.runfolder import RunFolderLock
from anobench.runner import RunOptions, run_suite
from anobench.suites import load_suite
from tests.conftest import kill_when_recorded, write_suite

CELLS = 2  # the small suite: PaDiM-R18 at 32 px on two generated classes
SIZE = 32


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    write_dataset(root, SynthSpec(seed=0, size=SIZE, classes=("stripes", "disc"), train=6, test_good=2,
                                  test_per_defect=1))
    return root


def small_suite(path: Path, root: Path, seeds: tuple[int, ...] = (0,)) -> Path:
    suite = write_suite(path, root, seeds=seeds)
    suite.write_text(suite.read_text().replace("resolutions = [64]", f"resolutions = [{SIZE}]"))
    return suite


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """The one error line (asserting there is exactly one, last, and no traceback)."""
        errors = [line for line in self.err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and self.err.strip().splitlines()[-1] == errors[0], self.err
        assert "Traceback" not in self.err
        print(f"exit {self.code}: {errors[0]}")  # the matrix of messages: pytest -rP tests/test_faults.py
        return errors[0]


@pytest.fixture
def cli(capsys, monkeypatch) -> Callable[..., Outcome]:
    """``bench ARGS`` through the CLI's entry point, in this process."""

    def call(*args) -> Outcome:
        monkeypatch.setattr(sys, "argv", ["bench", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return call


def test_a_cell_killed_by_the_kernel_is_recorded_as_failed_and_the_run_goes_on(cli, small_data, tmp_path):
    """The worker scoring a cell is killed with SIGKILL (as by the out-of-memory killer): that cell gets a
    failed record with the signal and the worker's peak memory, the next cells run, the run exits 1."""
    suite = write_suite(tmp_path / "killed.toml", small_data, classes=("disc",),
                        methods=("tests.broken_methods:SelfKillingPaDiM", "padim"))
    suite.write_text(suite.read_text().replace("resolutions = [64]", f"resolutions = [{SIZE}]"))
    outcome = cli("run", "--suite", suite, "--out", tmp_path / "run", "--no-report")
    assert outcome.code == 1, outcome.err
    records = {r["config"]["method"]: r for r in read_records(tmp_path / "run")}
    killed = records["tests.broken_methods:SelfKillingPaDiM"]
    assert killed["status"] == "failed"
    assert re.fullmatch(r"worker killed by signal 9 \(SIGKILL\), most likely out of memory \(the kernel's OOM "
                        r"killer sends it\); peak RSS so far [\d,]+ MiB", killed["error"]), killed["error"]
    assert records["padim"]["status"] == "ok"
    assert "1 ok, 1 failed" in outcome.out


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, small_data) -> Path:
    """A finished run of the small suite (data, suite file and run folder), copied by every case."""
    root = tmp_path_factory.mktemp("faults")
    shutil.copytree(small_data, root / "data")
    suite = small_suite(root / "small.toml", root / "data")
    run_suite(load_suite(str(suite)), root / "run", RunOptions())
    assert len(read_records(root / "run")) == CELLS
    return root


@dataclass
class World:
    data: Path
    suite: Path
    run: Path
    tmp: Path

    def run_args(self, *extra) -> list:
        return ["run", "--suite", self.suite, "--out", self.run, "--no-report", *extra]


def folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def world(base_run, small_data, tmp_path) -> World:
    """Fresh undamaged data at the path the run folder recorded, and a copy of the finished run folder."""
    data = base_run / "data"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(small_data, data)
    shutil.copytree(base_run / "run", tmp_path / "run")
    return World(data, base_run / "small.toml", tmp_path / "run", tmp_path)


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def resize_mask(path: Path, factor: float) -> None:
    mask = Image.open(path)
    mask.resize((int(mask.width * factor), int(mask.height * factor)), Image.NEAREST).save(path)


# ----------------------------------------------------------------------------------------------------------
# faults refused before any work: the data


LAYOUT_CASES = {
    "missing data root": (lambda d: shutil.rmtree(d), r"Data root .*/data does not exist; pass --data-root"),
    "empty train/good": (lambda d: [p.unlink() for p in (d / "disc/train/good").iterdir()],
                         r"disc/train/good is missing or holds no images; every class needs defect-free"),
    "no test folder": (lambda d: shutil.rmtree(d / "disc/test"), r"disc/test is missing or holds no images"),
    "defect image without a mask": (lambda d: (d / "disc/ground_truth/stain/000_mask.png").unlink(),
                                    r"Defect image .*disc/test/stain/000.png has no mask .*000_mask.png"),
    "truncated PNG in train/good": (lambda d: cut(d / "disc/train/good/003.png"),
                                    r"Cannot use image .*train/good/003.png \(image file is truncated\); replace or "
                                    r"remove the file\.$"),
    "zero-byte PNG": (lambda d: (d / "disc/test/good/001.png").write_bytes(b""),
                      r"Cannot use image .*test/good/001.png \(it is empty: 0 bytes\); replace or remove"),
    "not an image": (lambda d: (d / "stripes/test/color/000.png").write_text("<html>404</html>"),
                     r"Cannot use image .*stripes/test/color/000.png \(cannot identify image file"),
    "mask half the size": (lambda d: resize_mask(d / "disc/ground_truth/scratch/000_mask.png", 0.5),
                           r"Mask .*scratch/000_mask.png is 16×16 but its image .*test/scratch/000.png is 32×32; a "
                           r"mask must have its image's size"),
    "mask twice the size": (lambda d: resize_mask(d / "disc/ground_truth/color/000_mask.png", 2),
                            r"Mask .*color/000_mask.png is 64×64 but its image .*32×32"),
    "truncated mask": (lambda d: cut(d / "stripes/ground_truth/cutout/000_mask.png", 0.7),
                       r"Cannot use image .*cutout/000_mask.png \(image file is truncated\)"),
    "empty mask of a defect image": (
        lambda d: Image.new("L", (SIZE, SIZE)).save(d / "disc/ground_truth/cutout/000_mask.png"),
        r"Defect image .*disc/test/cutout/000.png has an entirely empty mask .*cutout/000_mask.png; fix the mask, "
        r"or set the dataset option allow_empty_masks = true if that is intended\.$"),
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_damaged_data_is_refused_before_any_work(cli, world, case):
    damage, message = LAYOUT_CASES[case]
    damage(world.data)
    before = folder_state(world.run)
    result = cli(*world.run_args())
    assert result.code == 2
    assert re.search(message, result.error), result.error
    assert folder_state(world.run) == before  # records (and everything else) unchanged


def test_an_empty_mask_is_accepted_where_the_dataset_option_says_so(cli, world):
    Image.new("L", (SIZE, SIZE)).save(world.data / "disc/ground_truth/cutout/000_mask.png")
    suite = small_suite(world.tmp / "allowed.toml", world.data)
    suite.write_text(suite.read_text().replace("[dataset]\n", "[dataset]\noptions = { allow_empty_masks = true }\n"))
    result = cli("run", "--suite", suite, "--plan")
    assert result.code == 0 and "2 cells on cpu" in result.out, result.err


def test_hidden_and_os_metadata_files_are_ignored(cli, world):
    good = world.data / "disc/train/good"
    (good / "._000.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # what macOS leaves on foreign disks
    (good / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (good / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    result = cli("run", "--suite", world.suite, "--out", world.tmp / "fresh", "--no-report")
    assert result.code == 0, result.err
    records = read_records(world.tmp / "fresh")
    assert [r["status"] for r in records] == ["ok"] * CELLS
    assert {r["n_images"]["train"] for r in records} == {6}


# ----------------------------------------------------------------------------------------------------------
# faults refused before any work: suites (bench validate and bench run refuse the same, with one message)


def suite_text(world: World, **changes: str) -> str:
    text = small_suite(world.tmp / "base.toml", world.data).read_text()
    for old, new in changes.values():
        assert old in text
        text = text.replace(old, new)
    return text


SUITE_CASES = {
    "bad TOML": ({"t": ("weights =", "weights = = ")}, r"is not valid TOML \(.*\); fix the syntax\."),
    "unknown method": ({"t": ('"padim"', '"padm"')},
                       r"Unknown method 'padm' in suite bad.toml; did you mean 'padim'\? Valid methods: "),
    "unknown encoder": ({"t": ('"resnet18"', '"resnet81"')}, r"Unknown encoder 'resnet81' in suite bad.toml"),
    "unknown dataset": ({"t": ('name = "folder"', 'name = "foldr"')},
                        r"Unknown dataset 'foldr' in suite bad.toml; did you mean 'folder'\?"),
    "unknown key": ({"t": ("batch_size = 8", "batchsize = 8")},
                    r"bad.toml: unknown key 'batchsize' in the suite; did you mean 'batch_size'\? Valid keys: "),
    "batch size 0": ({"t": ("batch_size = 8", "batch_size = 0")},
                     r"bad.toml: 'batch_size' in the suite must be a positive integer, got 0\.$"),
    "resize below the resolution": ({"t": ("resolutions = [32]", "resolutions = [32]\nresize = 24")},
                                    r"bad.toml: \[\[grid\]\] #1: resize 24 is smaller than the resolution 32; "),
    "negative resize": ({"t": ("resolutions = [32]", "resolutions = [32]\nresize = -32")},
                        r"'resize' in \[\[grid\]\] #1 must be a positive integer, got -32\."),
    "resolution below the encoder's smallest useful size": (
        {"t": ("resolutions = [32]", "resolutions = [8]")},
        r"bad.toml, \[\[grid\]\] #1: resolution 8 is below 16 px, the smallest useful input of resnet18 for padim "
        r"\(the stride of level 3, the deepest it taps\); use a resolution of at least 16\.$"),
    "unknown method parameter": (
        {"m": ('"padim"', '"cflow"'), "p": ("resolutions = [32]", "resolutions = [32]\nparams = { meta_epoch = 3 }")},
        r"bad.toml, \[\[grid\]\] #1: method 'cflow' has no parameter 'meta_epoch'; did you mean 'meta_epochs'\? Its "
        r"parameters: "),
    "parameter the suite sets": ({"t": ("resolutions = [32]", "resolutions = [32]\nparams = { seed = 3 }")},
                                 r"params sets 'seed', which comes from the suite's seeds; remove it from params\."),
}


@pytest.mark.parametrize("case", list(SUITE_CASES))
def test_bad_suites_are_refused_alike_by_validate_and_run(cli, world, case):
    changes, message = SUITE_CASES[case]
    bad = world.tmp / "bad.toml"
    bad.write_text(suite_text(world, **changes))
    before = folder_state(world.run)
    validated = cli("validate", bad)
    ran = cli("run", "--suite", bad, "--out", world.run, "--no-report")
    assert validated.code == ran.code == 2
    assert re.search(message, validated.error), validated.error
    assert ran.error == validated.error  # one code path
    assert folder_state(world.run) == before


# ----------------------------------------------------------------------------------------------------------
# devices and output folders


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA runs --device cuda")
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
@pytest.mark.parametrize("plan", [False, True])
def test_cuda_without_a_cuda_device_is_one_sentence(cli, world, device, plan):
    before = folder_state(world.run)
    result = cli(*world.run_args("--device", device, *(["--plan"] if plan else [])))
    assert result.code == 2
    assert result.error.startswith(f"error: --device {device}: no usable CUDA device on this machine (")
    assert result.error.endswith("pass --device cpu or auto.")
    assert folder_state(world.run) == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_device_index_beyond_the_devices_present_is_one_sentence(cli, world):
    count = torch.cuda.device_count()
    result = cli(*world.run_args("--device", f"cuda:{count}", "--plan"))
    assert result.code == 2
    assert result.error == (f"error: --device cuda:{count}: this machine has {count} CUDA device(s), cuda:0 to "
                            f"cuda:{count - 1}; pass one of them.")


def test_an_unknown_device_is_one_sentence(cli, world):
    result = cli(*world.run_args("--device", "gpu"))
    assert result.code == 2 and result.error == "error: Unknown device 'gpu'; pass auto, cpu, cuda or cuda:N."


def read_only_folder(tmp: Path) -> Path:
    """A folder this process cannot create files in: a chmod-ed one, or for root (whom permissions do not
    stop) a sysfs folder, where the kernel refuses new files to everyone."""
    if os.geteuid() != 0:
        folder = tmp / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = Path("/sys/kernel")
    try:
        os.close(os.open(folder / ".lock", os.O_RDWR | os.O_CREAT))
    except OSError:
        return folder
    pytest.skip("no folder here refuses new files to root")


@pytest.mark.parametrize("where, message", [
    ("a regular file", r"Run folder .*/a-file is a file, not a folder; pass --out a new or existing run folder\.$"),
    ("below a regular file", r"Run folder .*/a-file/run cannot be created or written \(.*Not a directory\); "),
    ("a read-only folder", r"Run folder .* cannot be written \(.*/\.lock: Permission denied\); pass --out a folder "
                           r"you can write to\.$"),
])
def test_an_output_folder_that_cannot_be_written_is_one_sentence(cli, world, where, message):
    (world.tmp / "a-file").write_text("not a folder")
    out = {"a regular file": world.tmp / "a-file", "below a regular file": world.tmp / "a-file/run",
           "a read-only folder": read_only_folder(world.tmp)}[where]
    result = cli(*world.run_args()[:3], "--out", out, "--no-report")
    assert result.code == 2
    assert re.search(message, result.error), result.error
    assert (world.tmp / "a-file").read_text() == "not a folder"


def test_no_space_left_in_the_middle_of_a_run_keeps_the_records_written(cli, world, monkeypatch):
    real_append = runner.append_record

    def disk_fills_after_the_first_record(location, record):
        if read_records(location):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_append(location, record)

    monkeypatch.setattr(runner, "append_record", disk_fills_after_the_first_record)
    fresh = world.tmp / "fresh"
    result = cli("run", "--suite", world.suite, "--out", fresh, "--no-report")
    assert result.code == 2
    assert result.error == (f"error: No space left for run folder {fresh} (No space left on device); the records "
                            f"written so far are intact: free some space and rerun the same command to continue.")
    assert len(read_records(fresh)) == 1
    monkeypatch.setattr(runner, "append_record", real_append)
    again = cli("run", "--suite", world.suite, "--out", fresh, "--no-report")
    assert again.code == 0 and "1 ok, 0 failed, 1 already done" in again.out
    assert len(read_records(fresh)) == CELLS == len(latest_by_cell(read_records(fresh)))


# ----------------------------------------------------------------------------------------------------------
# damaged records: a warning, and the run and the report complete


@pytest.mark.parametrize("damage, reason", [
    (lambda line: line[:20] + b"\xff\xfe\x00\x9c" + line[24:], "not valid UTF-8"),  # a disk or copy fault
    (lambda line: line[: len(line) // 2] + b"\n", "not valid JSON"),
])
def test_a_damaged_record_line_is_skipped_with_a_warning_and_its_cell_reruns(cli, world, damage, reason):
    path = world.run / "records.jsonl"
    first, second = path.read_bytes().splitlines(keepends=True)
    damaged = damage(first) + second
    path.write_bytes(damaged)
    warning = (f"warning: {path}: skipped line 1 ({reason}); the cell it held counts as not done (a resumed run "
               f"reruns it) and the damaged line stays in the file.")
    result = cli(*world.run_args())
    assert result.code == 0, result.err
    assert result.err.count(warning) == 1, result.err
    assert "1 ok, 0 failed, 1 already done" in result.out
    assert path.read_bytes().startswith(damaged)  # nothing rewritten: the damaged line stays, one line appended
    assert len(read_records(world.run)) == CELLS == len(latest_by_cell(read_records(world.run)))
    report = cli("report", world.run, "--format", "md")
    assert report.code == 0 and (world.run / "report.md").is_file(), report.err


def test_a_locked_run_folder_is_read_by_report_and_compare(cli, world):
    with RunFolderLock(world.run):  # as a bench run writing it holds it
        assert cli(*world.run_args()).code == 2  # a second writer is refused...
        report = cli("report", world.run, "--format", "md")
        compare = cli("compare", world.run, world.run)
    assert report.code == 0 and compare.code == 0, report.err + compare.err  # ...readers are not


# ----------------------------------------------------------------------------------------------------------
# a second writer, kill -9, Ctrl-C and SIGTERM (other processes)


def default_sigint() -> None:
    """In the child before it runs Python: Ctrl-C's default disposition. A shell without job control starts
    background jobs with SIGINT ignored, Python then keeps it ignored, and the test's Ctrl-C would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_bench(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], env={**os.environ, "ANOBENCH_PROGRESS": "0"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)


def wait_for(condition: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def cells_run(tmp_path: Path, small_data: Path, seeds: tuple[int, ...]) -> tuple[list, Path]:
    """The arguments of a run of 2 × len(seeds) cells into ``tmp_path/run``."""
    suite = small_suite(tmp_path / "cells.toml", small_data, seeds=seeds)
    run_dir = tmp_path / "run"
    return ["run", "--suite", suite, "--out", run_dir, "--no-report"], run_dir


def wait_for_records(run_dir: Path, count: int) -> None:
    wait_for(lambda: len(read_records(run_dir)) >= count)


@pytest.mark.slow
def test_a_second_writer_is_refused_and_the_first_finishes_with_one_record_per_cell(tmp_path, small_data):
    args, run_dir = cells_run(tmp_path, small_data, seeds=(0, 1))
    first = start_bench(*args)
    wait_for(lambda: (run_dir / ".lock").is_file() and (run_dir / ".lock").stat().st_size > 0)
    first.send_signal(signal.SIGSTOP)  # hold the first writer inside its run, whatever the machine's speed
    try:
        before = folder_state(run_dir)
        second = start_bench(*args)
        out, err = second.communicate(timeout=600)
        assert Outcome(second.returncode, out, err).error == (
            f"error: Run folder {run_dir} is in use by another bench run (PID {first.pid} on host "
            f"{socket.gethostname()}); wait for it to finish, or pass another --out.")
        assert second.returncode == 2
        assert folder_state(run_dir) == before  # the second wrote nothing
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert len(read_records(run_dir)) == 4 == len(latest_by_cell(read_records(run_dir)))


@pytest.mark.slow
def test_ctrl_c_sigterm_and_kill_9_stop_a_run_that_the_same_command_then_continues(tmp_path, small_data):
    """One run folder of 6 cells, stopped three times in turn (each after one more record), then completed:
    each stop keeps the records before it whole and leaves no lock behind (the next command runs)."""
    args, run_dir = cells_run(tmp_path, small_data, seeds=(0, 1, 2))
    for stop, code in [(signal.SIGINT, 130), (signal.SIGTERM, 143)]:
        process = start_bench(*args)
        wait_for_records(run_dir, len(read_records(run_dir)) + 1)
        process.send_signal(stop)
        _, err = process.communicate(timeout=300)
        assert process.returncode == code, err
        assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to continue"
        assert "Traceback" not in err
        assert all(r["status"] == "ok" for r in read_records(run_dir))  # the interrupted cell left no record
    done = len(read_records(run_dir))
    assert 2 <= done < 5, "each stop lands inside the run"
    killed = kill_when_recorded([sys.executable, "-m", "bench", *map(str, args)], run_dir, at_least=done + 1)
    final = start_bench(*args)
    out, err = final.communicate(timeout=600)
    assert final.returncode == 0, err
    assert f"{6 - killed} ok, 0 failed, {killed} already done" in out
    assert len(read_records(run_dir)) == 6 == len(latest_by_cell(read_records(run_dir)))
    assert all(json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines())
