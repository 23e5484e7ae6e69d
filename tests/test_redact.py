"""Redaction: the detectors, the policy, and what the chunker sends in place of a match."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.chunk import CHUNK_COLUMNS, ChunkLimits, ChunkStats, chunk_table
from pipeline.core import redact
from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError
from pipeline.core.models import content_hash
from pipeline.incremental import plan

SECRETS: dict[str, str] = {
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq\n"
    "-----END RSA PRIVATE KEY-----",
    "password": "password = hunter22",
    "bearer_token": "Bearer abcdefghijklmnopqrstuvwxyz",
    "jwt": "eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4",
    "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "github_token": "ghp_" + "a1" * 18,
    "slack_token": "xoxb-1234567890-abcdef",
    "api_key": "sk-" + "Z" * 24,
    "google_api_key": "AIza" + "B" * 35,
}
"""One value per secret kind (each masked by the default policy)."""
PERSONAL: dict[str, str] = {"email": "jane.doe@example.com", "phone": "+44 20 7946 0958"}
SENSITIVE = {**SECRETS, **PERSONAL}
"""Every value a test must never find where masked content goes."""


def test_every_builtin_kind_has_a_sample() -> None:
    assert set(SENSITIVE) == set(redact.BUILTIN_KINDS)


def _column(texts: list[str]) -> pa.Array:
    return pa.array(texts, pa.large_string())


@pytest.mark.parametrize("kind", sorted(SENSITIVE))
def test_each_kind_is_masked_by_a_typed_stand_in(kind: str) -> None:
    text = f"note: {SENSITIVE[kind]} (end)"
    policy = redact.Policy.build({kind: "mask"})
    out = redact.redact(_column([text]), policy)
    sent = out.content[0].as_py()
    assert redact.mask_token(kind) in sent
    assert SENSITIVE[kind] not in sent
    assert sent.startswith("note: ")
    assert out.masked_counts()[kind] == 1


@pytest.mark.parametrize("kind", sorted(SENSITIVE))
def test_keep_sends_the_value_unchanged(kind: str) -> None:
    text = f"note: {SENSITIVE[kind]} (end)"
    out = redact.redact(_column([text]), redact.Policy.off())
    assert out.content[0].as_py() == text
    assert not out.masked_by_row and not out.dropped_by_row


def test_default_masks_secrets_and_keeps_personal_data() -> None:
    texts = [f"a {v} b" for v in SENSITIVE.values()]
    out = redact.redact(_column(texts), redact.DEFAULT_POLICY)
    sent = out.content.to_pylist()
    for kind, text, result in zip(SENSITIVE, texts, sent, strict=True):
        if kind in redact.SECRET_KINDS:
            assert result == f"a {redact.mask_token(kind)} b", kind
        else:
            assert result == text
    assert dict(out.masked_counts()) == dict.fromkeys(SECRETS, 1)


def test_chunked_columns_keep_row_positions() -> None:
    column = pa.chunked_array(
        [_column(["a", f"b {SECRETS['jwt']}"]), _column([f"c {SECRETS['jwt']}", "d"])]
    )
    out = redact.redact(column, redact.DEFAULT_POLICY)
    assert out.content.to_pylist() == ["a", "b [REDACTED:jwt]", "c [REDACTED:jwt]", "d"]
    assert set(out.masked_by_row) == {1, 2}
    clean = pa.chunked_array([_column(["a"]), _column(["b"])])
    assert redact.redact(clean, redact.DEFAULT_POLICY).content is clean


def test_drop_message_drops_the_whole_row_and_names_the_kinds() -> None:
    policy = redact.Policy.build({"email": "drop-message"})
    out = redact.redact(_column(["hi", f"mail {PERSONAL['email']}", "bye"]), policy)
    assert out.dropped_by_row == {1: ("email",)}
    assert redact.redact_text(f"x {PERSONAL['email']}", policy) is None
    assert redact.redact_text("nothing here", policy) == "nothing here"


def test_a_private_key_is_masked_from_begin_to_end_line() -> None:
    body = "-----BEGIN PRIVATE KEY-----\nAAAA\nBBBB\n-----END PRIVATE KEY-----"
    sent = redact.redact_text(f"key:\n{body}\nthanks", redact.DEFAULT_POLICY)
    assert sent == "key:\n[REDACTED:private_key]\nthanks"
    cut = redact.redact_text("-----BEGIN EC PRIVATE KEY-----\nAAAA\nBB", redact.DEFAULT_POLICY)
    assert cut == "[REDACTED:private_key]"


def test_custom_regexes_are_named_kinds() -> None:
    policy = redact.Policy.build(custom=[("ticket", r"\bTCK-\d{4}\b", "mask")])
    assert redact.redact_text("see TCK-1234 now", policy) == "see [REDACTED:ticket] now"


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60), st.sampled_from(sorted(SECRETS)))
def test_masked_output_never_holds_the_value(before: str, after: str, kind: str) -> None:
    text = f"{before} {SECRETS[kind]} {after}"
    sent = redact.redact_text(text, redact.DEFAULT_POLICY)
    assert sent is not None
    assert SECRETS[kind] not in sent
    assert redact.redact_text(text, redact.Policy.off()) == text


def test_masks_are_stable_across_calls() -> None:
    text = f"k {SECRETS['aws_access_key']} and {SECRETS['api_key']}"
    first = redact.redact_text(text, redact.DEFAULT_POLICY)
    assert first == redact.redact_text(text, redact.DEFAULT_POLICY)
    other = redact.redact_text(text.replace("EXAMPLE", "EXAMPLF"), redact.DEFAULT_POLICY)
    assert first == other  # the mask depends on the kind only, never on the value


# --- config ---------------------------------------------------------------------------


def _cfg(tmp_path: Path, section: str) -> Any:
    path = tmp_path / "p.yaml"
    path.write_text(section, encoding="utf-8")
    return load_config(path, env={})


def test_the_redact_section_sets_actions_per_kind(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        "redact:\n  email: mask\n  jwt: keep\n  aws_access_key: drop-message\n"
        "  custom:\n    - name: ticket\n      pattern: 'TCK-\\d+'\n",
    )
    actions = cfg.redact.policy().actions()
    assert actions["email"] == "mask" and actions["jwt"] == "keep"
    assert actions["aws_access_key"] == "drop-message" and actions["ticket"] == "mask"
    assert actions["phone"] == "keep" and actions["password"] == "mask"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("redact:\n  emails: mask\n", "unknown key 'redact.emails'"),
        ("redact:\n  email: hide\n", "redact.email"),
        ("redact:\n  custom:\n    - name: t\n      pattern: '(unclosed'\n", "not usable"),
        ("redact:\n  custom:\n    - name: t\n      pattern: 'x*'\n", "empty string"),
        ("redact:\n  custom:\n    - name: email\n      pattern: 'x'\n", "built-in kind"),
    ],
)
def test_bad_redact_sections_are_one_line_config_errors(
    tmp_path: Path, section: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, section)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# --- chunk ----------------------------------------------------------------------------

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _staged(contents: list[str]) -> pa.Table:
    n = len(contents)
    return pa.table(
        {
            "source": ["csv"] * n,
            "message_id": [f"m{i}" for i in range(n)],
            "conversation_id": ["c"] * n,
            "user_id": ["u"] * n,
            "role": ["user"] * n,
            "content": pa.array(contents, pa.large_string()),
            "created_at": pa.array([T0] * n, pa.timestamp("us", tz="UTC")),
            "seq": list(range(n)),
        }
    ).select(CHUNK_COLUMNS)


def test_chunk_sends_redacted_content_and_counts_it_per_batch() -> None:
    contents = [f"m{i} {v}" for i, v in enumerate(SENSITIVE.values())] + ["plain"]
    stats = ChunkStats()
    policy = redact.Policy.build({"phone": "drop-message"})
    batches = list(chunk_table(_staged(contents), ChunkLimits(), stats, policy=policy))
    sent = [m["content"] for b in batches for m in b.body["messages"]]
    assert len(sent) == len(contents) - 1  # the phone message is dropped
    assert all(v not in text for text in sent for k, v in SENSITIVE.items() if k != "email")
    assert PERSONAL["email"] in " ".join(sent)  # kept by default
    masked = {k: 1 for k in SECRETS}
    assert dict(stats.masked) == masked
    assert stats.masked_messages == len(SECRETS)
    assert stats.dropped == 1 and dict(stats.dropped_by_kind) == {"phone": 1}
    assert stats.messages == stats.batched + stats.excluded + stats.dropped
    total: dict[str, int] = {}
    for batch in batches:
        for k, n in batch.redacted.items():
            total[k] = total.get(k, 0) + n
        assert list(batch.content_hashes) == [
            content_hash(m["content"]) for m in batch.body["messages"]
        ]
    assert total == masked
    assert stats.dropped_examples == [
        {"message_id": "m10", "user_id": "u", "conversation_id": "c", "kinds": ["phone"]}
    ]
    assert stats.to_json()["redacted"]["masked"] == masked


def test_a_split_message_counts_its_masks_once() -> None:
    long = " ".join(["word"] * 3000) + f" {SECRETS['api_key']} " + " ".join(["word"] * 3000)
    stats = ChunkStats()
    batches = list(chunk_table(_staged([long]), ChunkLimits(max_tokens=1000), stats))
    assert len(batches) > 2
    assert sum(b.redacted.get("api_key", 0) for b in batches) == 1
    assert SECRETS["api_key"] not in "".join(
        m["content"] for b in batches for m in b.body["messages"]
    )


def test_delivered_rows_are_not_counted_as_redacted() -> None:
    contents = [f"a {SECRETS['jwt']}", f"b {SECRETS['jwt']}"]
    stats = ChunkStats()
    list(chunk_table(_staged(contents), ChunkLimits(), stats, {"m0"}))
    assert stats.masked["jwt"] == 1 and stats.excluded == 1


# --- the changed-content rule ----------------------------------------------------------


def test_plan_compares_the_content_as_sent() -> None:
    table = _staged([f"a {SECRETS['jwt']}", "plain", f"c {PERSONAL['email']}"])
    sent = {
        f"m{i}": content_hash(redact.redact_text(t, redact.DEFAULT_POLICY) or "")
        for i, t in enumerate(table.column("content").to_pylist())
    }
    same = plan(table, sent, resend_changed=False)
    assert same.changed.num_rows == 0 and same.exclude == {"m0", "m1", "m2"}
    masking_email = redact.Policy.build({"email": "mask"})
    changed = plan(table, sent, resend_changed=True, policy=masking_email)
    assert changed.changed_ids == ["m2"] and changed.exclude == {"m0", "m1"}
    dropping = redact.Policy.build({"email": "drop-message"})
    assert plan(table, sent, resend_changed=False, policy=dropping).changed_ids == ["m2"]
    unredacted = plan(table, sent, resend_changed=False, policy=redact.Policy.off())
    assert unredacted.changed_ids == ["m0"]


# --- the dry run's findings under a policy ---------------------------------------------


def test_secret_findings_are_warnings_only_for_kinds_the_policy_keeps() -> None:
    from pipeline.dryrun import checks

    table = _staged([f"x {SECRETS['jwt']}", f"y {PERSONAL['email']}"]).append_column(
        "source_file", pa.array(["f", "f"])
    )
    table = table.append_column("source_position", pa.array(["1", "2"]))
    masked = checks.secrets(table, redact.DEFAULT_POLICY)
    assert (masked.severity, masked.count) == ("info", 1)
    assert "jwt mask" in masked.description and masked.details["policy"] == {"jwt": "mask"}
    kept = checks.secrets(table, redact.Policy.build({"jwt": "keep"}))
    assert kept.severity == "warning" and "policy keep): jwt" in kept.description
    assert checks.secrets(table).severity == "warning"
    personal = checks.personal_data(table, redact.Policy.build({"email": "drop-message"}))
    assert personal.details["policy"] == {"email": "drop-message"}
    assert SECRETS["jwt"] not in str(masked.to_json()) + str(kept.to_json())
