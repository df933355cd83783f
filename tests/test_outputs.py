"""Outputs: one run per output folder or bank (locks), unwritable outputs refused before the work,
a failed final write keeps what was computed, and counts that cannot be planned refused up front."""

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsi_bench.build import build_shards
from dsi_bench.cli import main
from dsi_bench.errors import CacheError, LockError, ShardError, SpecError
from dsi_bench.locks import FOLDER_LOCK, file_lock, folder_lock
from dsi_bench.testing import disk_full_on_call

TINY = dict(shifts=["base"], classes="0", per_class=1, samples_per_shard=4, image_format="png", cpu_threads=1,
            progress=False)
HOLDER = """
import sys, time
from dsi_bench.locks import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path/out``'s lock (as a running build would)."""
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert proc.stdout.readline().strip() == "held"
        yield out, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_second_build_on_a_held_folder_is_refused_naming_the_holder(holder, tiny_spec, tiny_tokens):
    out, pid = holder
    t0 = time.perf_counter()
    with pytest.raises(LockError) as e:
        build_shards(out, pipeline=tiny_spec, tokens=tiny_tokens, seed=1, **TINY)
    assert time.perf_counter() - t0 < 30  # refused at once, not after waiting
    message = str(e.value)
    assert repr(str(out)) in message and f"pid {pid}@{socket.gethostname()} since " in message
    assert "folder_lock" not in message and "-c" in message  # the holder's command line
    assert sorted(p.name for p in out.iterdir()) == [FOLDER_LOCK]  # nothing built, the holder's lock kept


def test_a_build_takes_over_a_lock_its_dead_holder_left_and_removes_it(tmp_path, tiny_spec, tiny_tokens, caplog):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / FOLDER_LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                               "command": "dsi-bench build --seed 0", "since": "yesterday"}))
    with caplog.at_level(logging.WARNING, logger="dsi_bench.locks"):
        summary = build_shards(out, pipeline=tiny_spec, tokens=tiny_tokens, seed=1, **TINY)
    assert summary.complete
    assert f"pid {dead.pid}@" in caplog.text and "taking over" in caplog.text
    assert not (out / FOLDER_LOCK).exists()  # this run's lock file is gone with it


def test_a_held_lock_refuses_every_other_holder_and_its_file_goes_on_errors(tmp_path):
    lock = tmp_path / FOLDER_LOCK
    with folder_lock(tmp_path):
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["since"]
        with pytest.raises(LockError, match=f"pid {os.getpid()}@"):
            with folder_lock(tmp_path):  # another open of the same file: refused like another process
                pass
    assert not lock.exists()
    for interrupt in (KeyboardInterrupt, RuntimeError):
        with pytest.raises(interrupt), folder_lock(tmp_path):
            raise interrupt()
        assert not lock.exists()
    with folder_lock(tmp_path):  # free again
        pass


def test_torchrun_ranks_other_than_0_write_under_rank_0s_lock(tmp_path, monkeypatch):
    from dsi_bench.build import _folder_lock

    with folder_lock(tmp_path):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        with _folder_lock(tmp_path, "torchrun"):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(LockError), _folder_lock(tmp_path, "torchrun"):
            pass


def test_generate_refuses_a_held_folder_and_leaves_nothing_on_an_interrupt(tmp_path, tiny_spec, tiny_tokens,
                                                                           monkeypatch):
    from dsi_bench import folders

    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out), pytest.raises(LockError, match="output folder"):
        folders.generate_folder(out, pipeline=tiny_spec, tokens=tiny_tokens, classes="0", per_class=1,
                                progress=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(folders.Synthesizer, "open", interrupted)
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        folders.generate_folder(fresh, pipeline=tiny_spec, tokens=tiny_tokens, classes="0", per_class=1,
                                progress=False)
    assert not fresh.exists()  # the lock file went first, then the empty folder this run made


def test_learn_tokens_refuses_a_bank_another_run_is_writing(tmp_path):
    from dsi_bench.learn import learn_tokens

    bank = tmp_path / "bank.safetensors"
    with file_lock(bank, "token bank"):
        assert (tmp_path / ".bank.safetensors.lock").is_file()
        with pytest.raises(LockError, match="token bank"):
            learn_tokens(tmp_path / "no-data", generator=tmp_path / "no-model", out=bank, progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- outputs that cannot be written
@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a classifier is loaded or run."""
    import dsi_bench.evaluate

    def load_model(*args, **kwargs):
        raise AssertionError("the classifier was loaded before the outputs were checked")

    monkeypatch.setattr(dsi_bench.evaluate, "load_model", load_model)


def _eval(tmp_path, *extra):
    return main(["eval", "--classifier", "torchvision:resnet18", "--weights", "none", "--source", "shards",
                 "--root", str(tmp_path / "shards"), "--device", "cpu", "-q", *extra])


@pytest.mark.parametrize("flag", ["--results", "--predictions"])
def test_eval_refuses_an_output_that_is_a_folder_before_the_model_loads(tmp_path, capsys, no_model, flag):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    t0 = time.perf_counter()
    assert _eval(tmp_path, flag, str(folder)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and repr(str(folder)) in err and "is a folder" in err
    assert time.perf_counter() - t0 < 10


def test_eval_refuses_an_output_under_a_file_before_the_model_loads(tmp_path, capsys, no_model):
    (tmp_path / "file").write_text("x")
    assert _eval(tmp_path, "--results", str(tmp_path / "file" / "r.json")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not writable" in err and "r.json" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_eval_refuses_a_read_only_folder_before_the_model_loads(tmp_path, capsys, no_model):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert _eval(tmp_path, "--predictions", str(ro / "p.csv")) == 2
    finally:
        ro.chmod(0o755)
    assert "is not writable" in capsys.readouterr().err


def test_library_evaluate_checks_its_predictions_path_before_the_model_loads(tmp_path, no_model):
    from dsi_bench.evaluate import evaluate

    with pytest.raises(CacheError, match="predictions file"):
        evaluate("torchvision:resnet18", {"source": "shards", "root": str(tmp_path)}, predictions=tmp_path)


@pytest.mark.parametrize("command", [["build", "--device", "cpu"], ["generate", "--device", "cpu"],
                                     ["convert", "release/"]])
def test_build_generate_convert_refuse_an_out_that_is_a_file(tmp_path, capsys, command):
    (tmp_path / "out").write_text("mine")
    assert main([*command, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file, not a folder" in err
    assert (tmp_path / "out").read_text() == "mine"


def test_publish_dry_run_refuses_a_file_before_verifying(tmp_path, monkeypatch):
    import dsi_bench.hub as hub

    monkeypatch.setattr(hub, "export_dataset", lambda *a, **k: pytest.fail("the shards were read first"))
    (tmp_path / "pub").write_text("x")
    with pytest.raises(CacheError, match="dry-run folder"):
        hub.publish(tmp_path / "shards", "me/x", dry_run=tmp_path / "pub")


# ---------------------------------------------------------------------- a final write that fails
@pytest.fixture
def disk_full(tmp_path, monkeypatch):
    """Writes to paths in the returned set fail with ENOSPC; kept outputs go to ``tmp_path/tmp``."""
    import tempfile

    import dsi_bench.files as files

    real, full = files.atomic_write, set()

    def atomic_write(path, data):
        if Path(path) in full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    monkeypatch.setattr(files, "atomic_write", atomic_write)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return full


def _kept(message: str) -> list[Path]:
    return [Path(p) for p in message.split("'") if "dsi-bench-kept" in p]


def test_eval_keeps_results_and_predictions_when_the_disk_fills(tmp_path, classes, disk_full):
    from dsi_bench.evaluate import evaluate
    from dsi_bench.results import Results
    from dsi_bench.testing import FAKE_WNIDS, make_fake_release, oracle_classifier

    release = make_fake_release(tmp_path / "rel", wnids=FAKE_WNIDS[:2], per_class=3, size=8, pattern=True)
    model, transform = oracle_classifier()
    data = {"source": "imagenet-star", "root": release, "classes": "0-1", "class_list": classes, "masks": False,
            "missing": "skip"}
    preds = tmp_path / "preds.csv"
    disk_full.add(preds)
    with pytest.raises(CacheError) as e:
        evaluate(model, data, transform=transform, progress=False, num_workers=0, predictions=preds)
    message = str(e.value)
    assert f"could not write the predictions to {str(preds)!r} (No space left on device)" in message
    kept_preds, kept_results = _kept(message)
    assert kept_preds.read_text().splitlines()[0] == "key,label,prediction,top5,confidence"
    assert len(kept_preds.read_text().splitlines()) == 1 + 6
    results = Results.load(kept_results)
    assert results.shifts["base"]["n"] == 6 and not preds.exists()

    target = tmp_path / "results.json"
    disk_full.add(target)
    with pytest.raises(CacheError, match="could not write the results to") as e:
        results.save(target)
    (kept,) = _kept(str(e.value))
    assert Results.load(kept).data == results.data and not target.exists()


def test_cli_eval_disk_full_is_one_line_naming_the_path(tmp_path, disk_full, capsys):
    """The table was printed, the error is one line, and the results are kept."""
    from dsi_bench.results import Results
    from dsi_bench.testing import FAKE_WNIDS, make_fake_release

    release = make_fake_release(tmp_path / "rel", wnids=FAKE_WNIDS[:2], per_class=2, size=8, pattern=True)
    target = tmp_path / "r.json"
    disk_full.add(target)
    code = main(["eval", "--classifier", "dsi_bench.testing:oracle_classifier", "--source", "imagenet-star",
                 "--root", str(release), "--classes", "0-1", "--missing", "skip", "--device", "cpu", "-q",
                 "--num-workers", "0", "--results", str(target)])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and repr(str(target)) in err[0] and "No space left" in err[0]
    (kept,) = _kept(err[0])
    assert Results.load(kept).shifts["base"]["n"] == 4


# ---------------------------------------------------------------------- counts
@pytest.mark.parametrize("per_class, classes, message", [
    (10**9, "0", "per_class=1000000000 is more than the 1000000 samples per class"),
    (10**5, "0-199", "= 20000000 samples is more than the 10000000 one run can plan"),
])
def test_counts_that_cannot_be_planned_are_refused_before_allocating(tmp_path, tiny_spec, tiny_tokens, per_class,
                                                                     classes, message):
    import tracemalloc

    from dsi_bench.folders import generate_folder

    for make in (build_shards, generate_folder):
        tracemalloc.start()
        try:
            with pytest.raises(SpecError, match=message):
                make(tmp_path / "out", pipeline=tiny_spec, tokens=None, classes=classes, per_class=per_class,
                     progress=False)
            assert tracemalloc.get_traced_memory()[1] < 200e6
        finally:
            tracemalloc.stop()
    assert not (tmp_path / "out").exists()


def test_clip_filter_refuses_an_unwritable_output_before_scoring(tmp_path, classes, monkeypatch):
    import dsi_bench.clip_metric as clip_metric
    from dsi_bench.convert import convert_release
    from dsi_bench.testing import FAKE_WNIDS, make_fake_release

    release = make_fake_release(tmp_path / "rel", wnids=FAKE_WNIDS[:1], per_class=1, size=8)
    shards = tmp_path / "shards"
    convert_release(release, shards, class_list=classes, classes="0", missing="skip", progress=False)
    monkeypatch.setattr(clip_metric, "_score_items", lambda *a, **k: pytest.fail("scored before checking"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(CacheError, match="masks file .*taken.* is a folder"):
        clip_metric.clip_filter_shards(shards, masks_out=tmp_path / "taken", progress=False)


def test_learn_tokens_refuses_an_out_it_cannot_write_before_loading(tmp_path):
    from dsi_bench.learn import learn_tokens

    (tmp_path / "file").write_text("mine")
    with pytest.raises(CacheError, match="folder of the token bank .*file.* is a file, not a folder"):
        learn_tokens(tmp_path / "no-data", generator=tmp_path / "no-model", out=tmp_path / "file" / "bank.safetensors")
    assert (tmp_path / "file").read_text() == "mine"


def test_a_build_that_fills_the_disk_stops_in_one_line_and_keeps_its_shards(tmp_path, tiny_spec, tiny_tokens,
                                                                            monkeypatch, capsys):
    import dsi_bench.build as build

    real = build.atomic_write
    atomic_write, calls = disk_full_on_call(real, 3)  # the second shard's record finds the disk full
    monkeypatch.setattr(build, "atomic_write", atomic_write)
    out = tmp_path / "out"
    args = {**TINY, "per_class": 2, "samples_per_shard": 1}
    with pytest.raises(CacheError) as e:
        build_shards(out, pipeline=tiny_spec, tokens=tiny_tokens, **args)
    message = str(e.value)
    assert "No space left on device" in message and repr(str(out)) in message and str(calls[2]) in message
    assert "rerun the same command to resume" in message
    assert (out / "base" / "base-000000.tar").is_file() and not (out / FOLDER_LOCK).exists()
    monkeypatch.setattr(build, "atomic_write", real)
    summary = build_shards(out, pipeline=tiny_spec, tokens=tiny_tokens, **args)
    assert summary.complete and (summary.shards_skipped, summary.shards_built) == (1, 1)


def test_build_and_generate_never_replace_a_file_they_did_not_write(tmp_path, tiny_spec, tiny_tokens, capsys):
    """A user's file where a shard or an image would go is refused by name and left as it was."""
    from dsi_bench.folders import generate_folder

    out = tmp_path / "shards"
    (out / "base").mkdir(parents=True)
    mine = out / "base" / "base-000000.tar"
    mine.write_bytes(b"a user's tar")
    with pytest.raises(ShardError, match="base-000000.tar' is not a shard a build of this folder wrote"):
        build_shards(out, pipeline=tiny_spec, tokens=tiny_tokens, **TINY)
    assert mine.read_bytes() == b"a user's tar"
    mine.unlink()
    assert build_shards(out, pipeline=tiny_spec, tokens=tiny_tokens, **TINY).complete  # its own shards: resumed
    assert build_shards(out, pipeline=tiny_spec, tokens=tiny_tokens, **TINY).shards_skipped == 1

    images = tmp_path / "images"
    (images / "base" / "0000").mkdir(parents=True)
    photo = images / "base" / "0000" / "00.png"
    photo.write_bytes(b"a user's picture")
    kw = dict(shifts=["base"], classes="0", per_class=2, pipeline=tiny_spec, tokens=tiny_tokens, progress=False)
    with pytest.raises(CacheError, match=r"holds 1 file\(s\) that generate did not write .*0000/00.png"):
        generate_folder(images, **kw)
    assert photo.read_bytes() == b"a user's picture"
    photo.unlink()
    generate_folder(images, **kw)
    before = {p: p.read_bytes() for p in images.rglob("*.png")}
    generate_folder(images, **kw)  # its own images: kept
    assert {p: p.read_bytes() for p in images.rglob("*.png")} == before and len(before) == 2
