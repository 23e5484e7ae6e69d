"""The load's progress bar has a total from the start, though the batch file is read in
windows as the load goes: the manifest's message count, less what the windows read so far
show is delivered already or duplicated; exact once the file is read. It counts messages
(a message split into parts once), so it ends at its total when everything is sent."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.core.batches import Batch, write_batches, write_json_atomic
from pipeline.core.config import LoadConfig
from pipeline.core.models import stable_id
from pipeline.core.progress import TqdmProgress
from pipeline.core.workdir import manifest_path
from pipeline.load import entry
from pipeline.load.entry import load_workdir
from pipeline.load.stats import LoadStats
from pipeline.load.targets import Endpoint
from tests.loader_fakes import Fake, make_batches


class Recorded:
    """A progress bar that keeps every total it was given and what it advanced."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, int | None]] = []
        self.totals: list[int | None] = []
        self.done = 0

    def start(self, desc: str, total: int | None = None, unit: str = "it") -> None:
        self.starts.append((desc, total))
        self.totals.append(total)

    def advance(self, n: int = 1) -> None:
        self.done += n

    def set_total(self, total: int | None) -> None:
        self.totals.append(total)

    def close(self) -> None:
        pass


def write(workdir: Path, batches: list[Batch], *, manifest: bool = True) -> None:
    """The batch file, and a manifest counting its messages once (as chunk writes it)."""
    write_batches(workdir, batches)
    if manifest:
        messages = {m for b in batches for m in b.message_ids}
        write_json_atomic(
            manifest_path(workdir), {"batches": len(batches), "batched": len(messages)}
        )


def load(workdir: Path, fake: Fake, progress: Recorded) -> LoadStats:
    return load_workdir(
        workdir,
        Endpoint("http://memos.test", None),
        LoadConfig(rate=None, max_in_flight=4),
        transport=fake.transport(),
        progress=progress,
    )


@pytest.fixture(autouse=True)
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of 3 batches: the file spans many windows."""
    monkeypatch.setattr(entry, "WINDOW", 3)


def test_the_bar_has_the_manifest_total_from_the_start(tmp_path: Path) -> None:
    batches = make_batches({f"c{i}": 12 for i in range(10)}, per_batch=2)
    write(tmp_path, batches)
    progress = Recorded()
    stats = load(tmp_path, Fake(), progress)
    assert stats.complete and stats.sent_messages == 120
    assert progress.starts == [("load", 120)]
    assert set(progress.totals) == {120}
    assert progress.done == 120


def test_the_total_drops_by_what_is_already_delivered(tmp_path: Path) -> None:
    batches = make_batches({f"c{i}": 12 for i in range(10)}, per_batch=2)
    half = [b for b in batches if b.conversation_id in {"c0", "c1", "c2", "c3", "c4"}]
    write(tmp_path, half)
    fake = Fake()
    load(tmp_path, fake, Recorded())
    # the whole file again, with a message repeated by a later batch (a duplicate)
    repeat = replace(
        batches[-1],
        batch_id=stable_id("again"),
        index=99,
        message_ids=(batches[-1].message_ids[0], "c9-m-new"),
        content_hashes=(batches[-1].content_hashes[0], stable_id("new", length=16)),
        body={
            **batches[-1].body,
            "messages": [batches[-1].body["messages"][0], {"role": "user", "content": "new"}],
        },
    )
    write(tmp_path, [*batches, repeat])
    progress = Recorded()
    stats = load(tmp_path, fake, progress)
    assert stats.sent_messages == 61 and stats.duplicate_messages == 1
    assert progress.starts[0][1] is not None and progress.starts[0][1] <= 121
    totals = [t for t in progress.totals if t is not None]
    assert totals == sorted(totals, reverse=True)  # it only learns what is left out
    assert totals[-1] == 61 == progress.done


def test_a_message_in_parts_counts_once(tmp_path: Path) -> None:
    whole = make_batches({"a": 4, "b": 4}, per_batch=2)
    parts = [
        Batch(
            batch_id=stable_id("p", str(k)),
            user_id="u1",
            conversation_id="p",
            index=k - 1,
            message_ids=("p-m0",),
            content_hashes=(stable_id("long", length=16),),
            tokens=10,
            body={
                "user_id": "u1",
                "conversation_id": "p",
                "messages": [{"role": "user", "content": f"part {k}"}],
            },
            part=(k, 3),
        )
        for k in (1, 2, 3)
    ]
    write(tmp_path, [*whole, *parts])
    progress = Recorded()
    stats = load(tmp_path, Fake(), progress)
    assert stats.complete
    assert progress.starts == [("load", 9)]
    assert progress.totals[-1] == 9 == progress.done


def test_without_a_manifest_the_total_comes_once_the_file_is_read(tmp_path: Path) -> None:
    batches = make_batches({f"c{i}": 12 for i in range(10)}, per_batch=2)
    write(tmp_path, batches, manifest=False)
    progress = Recorded()
    load(tmp_path, Fake(), progress)
    assert progress.starts == [("load", None)]
    assert progress.totals[-1] == 120 == progress.done


def test_the_terminal_bar_takes_a_new_total(capsys: pytest.CaptureFixture[str]) -> None:
    bar = TqdmProgress(disable=False)
    bar.start("load", total=100, unit="msg")
    bar.advance(10)
    bar.set_total(40)
    bar.close()
    assert "10.0/40.0" in capsys.readouterr().err
