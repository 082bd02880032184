"""The run folder's records: what they write, and that every older format still reads."""
import json

import pytest

from largebatch.training.runfolder import PROGRESS_VERSION, Mode, Progress, RunFolder, RunInfo, Summary


@pytest.mark.parametrize("stored, mode", [
    ("plain", Mode.PLAIN), ("zero2", Mode.ZERO2), (None, Mode.PLAIN),  # a value; a checkpoint older than modes
    ("plain (DDP or one process)", Mode.PLAIN), ("DeepSpeed ZeRO stage 3", Mode.ZERO3),  # the sentences stored before
])
def test_modes_are_read_by_value_and_by_their_old_sentence(stored, mode):
    assert Mode.of(stored) is mode
    assert Mode.of(mode.value) is mode and Mode.of(mode.sentence) is mode


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown training mode"):
        Mode.of("ZeRO++")


def test_progress_round_trips_and_reads_the_unversioned_format():
    progress = Progress(step=4, examples=1024, tau=4.0, config={"seed": 0}, dataset={"name": "d"}, mode="plain",
                        segments=[{"step": 0}], train_stats=[1.0, 2.0, 3.0], noise=None, files={"a": "0"})
    assert Progress.from_json(progress.to_json()) == progress and progress.version == PROGRESS_VERSION
    old = {k: v for k, v in json.loads(progress.to_json()).items() if k != "version"}
    assert Progress.from_json(json.dumps(old)) == Progress(**dict(old, version=0))
    with pytest.raises(KeyError):  # no manifest: the checkpoint cannot be verified
        Progress.from_json(json.dumps(dict(step=4)))


def test_run_info_writes_one_flat_object_options_first(tmp_path):
    info = RunInfo({"global_batch": 256, "seed": 0}, "d", 10, 1, Mode.PLAIN.value, 1, 128, 2, 0.1, 0, 4, 2.0, [], None)
    folder = RunFolder(tmp_path)
    folder.config.write_text(info.to_json())
    written = folder.read_config()
    assert list(written)[:3] == ["global_batch", "seed", "dataset"] and written["accumulation_steps"] == 2


def test_a_summary_writes_the_flat_object_it_always_wrote():
    raw = {"status": "diverged", "epoch": 1.0, "test_error": 0.4, "final_test_error": 0.4, "message": "m"}
    summary = Summary.from_dict(raw)
    assert summary.last_eval == {"epoch": 1.0, "test_error": 0.4} and summary.message == "m"
    assert list(summary.to_dict().items()) == list(raw.items())
    assert Summary("finished").to_dict() == {"status": "finished"}
