"""Fuzzing the ChatGPT, Claude and CSV connectors: any JSON type or nesting in any field
they read never raises, counts add up, and one bad record quarantines only itself (a good
conversation written after the fuzzed ones is always staged). Slack's equivalent lives in
tests/test_slack.py."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.core.config import SourceConfig
from pipeline.core.staging import read_staging
from pipeline.extract import extract_source

DEEP_MARK = "\u2063deep\u2063"
"""Replaced, after dumping, by an array nested 300 deep: deeper than orjson writes (255),
shallower than it reads (1024), so a value that is parsed fine can still fail when copied."""
DEEP = "[" * 300 + "]" * 300

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.just(DEEP_MARK)
    | st.just(DEEP_MARK)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the right shape, sometimes any JSON value at all."""
    return st.one_of(valid, valid, JSON)


def dump(value: Any) -> str:
    return json.dumps(value).replace(json.dumps(DEEP_MARK), DEEP)


SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def folder_for(tmp_path: Path, value: Any) -> Path:
    """A fresh folder per example (hypothesis runs many in one `tmp_path`)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


# --- ChatGPT -----------------------------------------------------------------------------

NODE_IDS = ["n0", "n1", "n2", "n3"]
TIMES = st.floats(min_value=1e9, max_value=2e9)
PARTS = st.lists(
    either(
        st.text(max_size=20)
        | st.fixed_dictionaries(
            {},
            optional={
                "content_type": either(st.sampled_from(["image_asset_pointer", "audio"])),
                "text": JSON,
                "asset_pointer": either(st.just("file-service://file-abc")),
                "metadata": either(st.fixed_dictionaries({}, optional={"dalle": JSON})),
                "width": JSON,
                "frames_asset_pointers": JSON,
                "audio_asset_pointer": JSON,
            },
        )
    ),
    max_size=3,
)
CHATGPT_MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "id": JSON,
        "author": either(
            st.fixed_dictionaries(
                {},
                optional={
                    "role": either(st.sampled_from(["user", "assistant", "system", "tool"])),
                    "name": JSON,
                },
            )
        ),
        "create_time": either(TIMES),
        "content": either(
            st.fixed_dictionaries(
                {},
                optional={
                    "content_type": either(
                        st.sampled_from(
                            ["text", "code", "multimodal_text", "execution_output", "thoughts"]
                        )
                    ),
                    "parts": either(PARTS),
                    "text": JSON,
                    "language": JSON,
                    "result": JSON,
                    "url": JSON,
                },
            )
        ),
        "metadata": either(
            st.fixed_dictionaries(
                {},
                optional={
                    "model_slug": JSON,
                    "attachments": JSON,
                    "is_visually_hidden_from_conversation": JSON,
                    "is_user_system_message": JSON,
                },
            )
        ),
        "recipient": either(st.sampled_from(["all", "python"])),
        "channel": JSON,
    },
)
CHATGPT_NODE = st.fixed_dictionaries(
    {
        "parent": either(st.sampled_from([None, "n0", "n1", "n2", "gone"])),
        "message": either(CHATGPT_MESSAGE),
    },
    optional={"children": JSON, "id": JSON},
)
CHATGPT_CONVERSATION = either(
    st.fixed_dictionaries(
        {
            "id": either(st.sampled_from(["c1", "c2"])),
            "mapping": either(st.dictionaries(st.sampled_from(NODE_IDS), CHATGPT_NODE, max_size=4)),
        },
        optional={
            "current_node": either(st.sampled_from(NODE_IDS)),
            "title": JSON,
            "create_time": either(TIMES),
            "update_time": JSON,
            "default_model_slug": JSON,
            "gizmo_id": JSON,
        },
    )
)
CHATGPT_GOOD = {
    "id": "good",
    "mapping": {
        "r": {"id": "r", "parent": None, "message": None},
        "u": {
            "id": "u",
            "parent": "r",
            "message": {
                "id": "u",
                "author": {"role": "user"},
                "create_time": 1.7e9,
                "content": {"content_type": "text", "parts": ["still here"]},
            },
        },
    },
    "current_node": "u",
}


def chatgpt_one(message: dict[str, Any]) -> list[Any]:
    """A one-message conversation (for the explicit examples)."""
    node = {"parent": None, "message": {"author": {"role": "user"}, **message}}
    return [{"id": "c1", "mapping": {"n0": node}, "current_node": "n0"}]


@SETTINGS
@example(  # a content type that is not a string
    conversations=chatgpt_one({"content": {"content_type": [], "parts": ["x"]}}),
    branches="current",
    tools=False,
)
@example(  # a channel that is not a string
    conversations=chatgpt_one({"content": {"parts": ["x"]}, "channel": {}}),
    branches="current",
    tools=False,
)
@example(  # a value nested deeper than the JSON writer allows, copied into metadata
    conversations=chatgpt_one(
        {"content": {"parts": ["x"]}, "metadata": {"attachments": [{"id": DEEP_MARK}]}}
    ),
    branches="current",
    tools=False,
)
@given(
    conversations=st.lists(CHATGPT_CONVERSATION, max_size=3),
    branches=st.sampled_from(["current", "all"]),
    tools=st.booleans(),
)
def test_chatgpt_any_json_in_any_field_is_counted_never_raised(
    tmp_path: Path, conversations: list[Any], branches: str, tools: bool
) -> None:
    folder = folder_for(tmp_path, [conversations, branches, tools])
    items = [dump(c) for c in conversations] + [json.dumps(CHATGPT_GOOD)]
    (folder / "conversations.json").write_text("[" + ", ".join(items) + "]")
    (folder / "user.json").write_text('{"id": "me"}')
    options = {"branches": branches, "include_tool_messages": tools, "parallel": "off"}
    source = SourceConfig(kind="chatgpt", path=folder, options=options)
    stats = extract_source(source, folder / "w")
    assert stats.balanced, stats
    rows = read_staging(folder / "w").to_pylist()
    assert [r["content"] for r in rows if r["conversation_id"] == "good"] == ["still here"]


# --- Claude ------------------------------------------------------------------------------

UUIDS = ["m0", "m1", "m2", "m3"]
ISO = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(timezone.utc)
).map(lambda d: d.isoformat().replace("+00:00", "Z"))
CLAUDE_MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "uuid": either(st.sampled_from(UUIDS)),
        "sender": either(st.sampled_from(["human", "assistant", "system"])),
        "created_at": either(ISO),
        "text": JSON,
        "content": either(
            st.lists(
                either(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "type": either(st.sampled_from(["text", "tool_use", "thinking"])),
                            "text": JSON,
                            "name": JSON,
                            "input": JSON,
                        },
                    )
                ),
                max_size=3,
            )
        ),
        "parent_message_uuid": either(
            st.sampled_from(["00000000-0000-4000-8000-000000000000", *UUIDS, "gone"])
        ),
        "attachments": either(
            st.lists(
                either(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "file_name": JSON,
                            "file_type": JSON,
                            "file_size": JSON,
                            "extracted_content": JSON,
                        },
                    )
                ),
                max_size=2,
            )
        ),
        "files": either(
            st.lists(
                either(st.fixed_dictionaries({}, optional={"file_name": JSON, "file_uuid": JSON})),
                max_size=2,
            )
        ),
    },
)
CLAUDE_CONVERSATION = either(
    st.fixed_dictionaries(
        {
            "uuid": either(st.sampled_from(["c1", "c2"])),
            "chat_messages": either(st.lists(CLAUDE_MESSAGE, max_size=4)),
        },
        optional={
            "name": JSON,
            "created_at": either(ISO),
            "account": either(st.fixed_dictionaries({}, optional={"uuid": JSON})),
        },
    )
)
CLAUDE_GOOD = {
    "uuid": "good",
    "account": {"uuid": "a"},
    "chat_messages": [
        {
            "uuid": "g",
            "sender": "human",
            "created_at": "2025-01-01T00:00:00Z",
            "content": [{"type": "text", "text": "still here"}],
        }
    ],
}


def claude_one(message: dict[str, Any]) -> list[Any]:
    """A one-message conversation (for the explicit examples)."""
    text = {"created_at": "2025-01-01T00:00:00Z", "content": [{"type": "text", "text": "x"}]}
    return [{"uuid": "c1", "chat_messages": [{"sender": "human", **text, **message}]}]


@SETTINGS
@example(conversations=claude_one({"sender": []}), branches="current", attachments=False)
@example(  # a value nested deeper than the JSON writer allows, copied into metadata
    conversations=claude_one({"attachments": [{"file_name": DEEP_MARK}]}),
    branches="current",
    attachments=False,
)
@given(
    conversations=st.lists(CLAUDE_CONVERSATION, max_size=3),
    branches=st.sampled_from(["current", "all"]),
    attachments=st.booleans(),
)
def test_claude_any_json_in_any_field_is_counted_never_raised(
    tmp_path: Path, conversations: list[Any], branches: str, attachments: bool
) -> None:
    folder = folder_for(tmp_path, [conversations, branches, attachments])
    items = [dump(c) for c in conversations] + [json.dumps(CLAUDE_GOOD)]
    (folder / "conversations.json").write_text("[" + ", ".join(items) + "]")
    options = {"branches": branches, "include_attachment_text": attachments, "user_id": "me"}
    stats = extract_source(SourceConfig(kind="claude", path=folder, options=options), folder / "w")
    assert stats.balanced, stats
    rows = read_staging(folder / "w").to_pylist()
    assert [r["content"] for r in rows if r["conversation_id"] == "good"] == ["still here"]


# --- CSV ---------------------------------------------------------------------------------

OFFSETS = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)
STAMPS = st.one_of(
    st.text(max_size=30),
    st.datetimes(
        min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=OFFSETS
    ).map(datetime.isoformat),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)
CELL = st.text(max_size=20)
CSV_ROW = st.fixed_dictionaries(
    {
        "conversation_id": either(st.sampled_from(["c1", "c2"])) | CELL,
        "role": st.sampled_from(["user", "assistant", "bot", "", "USER"]) | CELL,
        "content": CELL,
        "timestamp": STAMPS,
        "user_id": st.sampled_from(["alice", ""]) | CELL,
        "message_id": st.sampled_from(["", "m1", "m1"]) | CELL,
    }
)


def csv_row(stamp: str) -> dict[str, str]:
    return {
        "conversation_id": "c1",
        "role": "user",
        "content": "x",
        "timestamp": stamp,
        "user_id": "alice",
        "message_id": "",
    }


@SETTINGS
@example(rows=[csv_row("9999-12-31T23:59:59-01:00")], zone="UTC")
@example(rows=[csv_row("9999-12-31T20:00:00")], zone="Pacific/Kiritimati")
@given(rows=st.lists(CSV_ROW, max_size=6), zone=st.sampled_from(["UTC", "Pacific/Kiritimati"]))
def test_csv_any_cell_is_counted_never_raised(
    tmp_path: Path, rows: list[dict[str, str]], zone: str
) -> None:
    folder = folder_for(tmp_path, [rows, zone])
    out = io.StringIO()
    columns = ["conversation_id", "role", "content", "timestamp", "user_id", "message_id"]
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: str(v) for k, v in row.items()})
    good = "good,user,still here,2025-01-01T00:00:00Z,alice,good-1"
    path = folder / "in.csv"
    path.write_text(out.getvalue() + good + "\n", encoding="utf-8", errors="surrogatepass")
    stats = extract_source(
        SourceConfig(kind="csv", path=path, options={"timezone": zone}), folder / "w"
    )
    assert stats.balanced, stats
    staged = read_staging(folder / "w").to_pylist()
    assert [r["content"] for r in staged if r["conversation_id"] == "good"] == ["still here"]
