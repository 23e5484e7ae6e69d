"""Slack mrkdwn, blocks and attachments -> readable text (pure functions)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from connectors.slack.text import (
    Names,
    fallback_content,
    render_blocks,
    render_mrkdwn,
    strip_url_token,
)

NAMES = Names({"U1": "Alice", "W2": "Bob"}, {"C1": "general", "C2": "random"})


def test_user_mentions_resolve_to_display_names() -> None:
    assert render_mrkdwn("hi <@U1> and <@W2|bob>", NAMES) == "hi @Alice and @Bob"


def test_unknown_users_stay_readable() -> None:
    assert render_mrkdwn("<@U404|carol> <@U405>", NAMES) == "@carol @U405"
    assert render_mrkdwn("<@USLACKBOT>", NAMES) == "@Slackbot"


def test_channels_special_mentions_and_groups() -> None:
    text = "<#C1|general> <#C2> <#C9> <!here> <!channel|@channel> <!everyone> <!subteam^S1|@devs>"
    assert render_mrkdwn(text, NAMES) == "#general #random #C9 @here @channel @everyone @devs"


def test_links_become_label_and_url() -> None:
    assert render_mrkdwn("see <https://x.org/a?b=1&amp;c=2|the doc>", NAMES) == (
        "see the doc (https://x.org/a?b=1&c=2)"
    )
    assert render_mrkdwn("<https://x.org>", NAMES) == "https://x.org"
    assert render_mrkdwn("<mailto:a@x.org|a@x.org>", NAMES) == "a@x.org"
    assert render_mrkdwn("<!date^1700000000^{date}|Nov 14>", NAMES) == "Nov 14"


def test_exactly_three_entities_are_decoded_once() -> None:
    assert render_mrkdwn("a &amp;lt; b &lt; c &gt; d &quot;e&quot; &#39;", NAMES) == (
        "a &lt; b < c > d &quot;e&quot; &#39;"
    )


def test_export_tokens_are_stripped_from_urls_and_redacted_anywhere() -> None:
    url = "https://files.slack.com/files-pri/T1-F1/a.pdf?t=xoxe-123-abc&dl=1"
    assert strip_url_token(url) == "https://files.slack.com/files-pri/T1-F1/a.pdf?dl=1"
    out = render_mrkdwn(f"<{url}|a.pdf> and token=xoxp-999-secret", NAMES)
    assert "xox" not in out
    assert "a.pdf (https://files.slack.com/files-pri/T1-F1/a.pdf?dl=1)" in out


def test_rich_text_blocks() -> None:
    blocks = [
        {
            "type": "rich_text",
            "elements": [
                {
                    "type": "rich_text_section",
                    "elements": [
                        {"type": "text", "text": "ship "},
                        {"type": "user", "user_id": "U1"},
                        {"type": "text", "text": " "},
                        {"type": "emoji", "name": "rocket", "unicode": "1f680"},
                        {"type": "link", "url": "https://x.org", "text": "doc"},
                    ],
                },
                {
                    "type": "rich_text_list",
                    "style": "ordered",
                    "elements": [
                        {"type": "rich_text_section", "elements": [{"type": "text", "text": "a"}]},
                        {"type": "rich_text_section", "elements": [{"type": "text", "text": "b"}]},
                    ],
                },
                {"type": "rich_text_preformatted", "elements": [{"type": "text", "text": "x<y"}]},
            ],
        }
    ]
    expected = "ship @Alice 🚀doc (https://x.org)\n1. a\n2. b\n```\nx<y\n```"
    assert render_blocks(blocks, NAMES) == expected


def test_fallback_content_from_attachments_and_files() -> None:
    message = {
        "attachments": [
            {
                "title": "Build",
                "fallback": "Build ok",
                "fields": [{"title": "env", "value": "staging &amp; prod"}],
            }
        ],
    }
    out = fallback_content(message, NAMES, ["report.pdf"])
    assert out == "Build\nBuild ok\nenv: staging & prod\n[file: report.pdf]"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@given(st.text())
def test_slack_escaping_round_trips(text: str) -> None:
    """Whatever a user typed comes back exactly from Slack's escaped form (tokens aside)."""
    if "xox" in text:
        return
    assert render_mrkdwn(_escape(text), NAMES) == text


@given(st.text(alphabet=st.characters(blacklist_characters="<>&")))
def test_plain_text_is_unchanged(text: str) -> None:
    if "xox" in text:
        return
    assert render_mrkdwn(text, NAMES) == text


_REFERENCE_PIECE = re.compile(r"<([^<>]*)>|&(amp|lt|gt);")


def _reference_render(text: str) -> str:
    """Slack's grammar as one left-to-right regex pass: a token is `<`, no `<` or `>`,
    then `>`; outside tokens the three entities are decoded once."""
    entities = {"amp": "&", "lt": "<", "gt": ">"}

    def piece(m: re.Match[str]) -> str:
        if m.group(2) is not None:
            return entities[m.group(2)]
        return render_mrkdwn(f"<{m.group(1)}>", NAMES)  # one token alone

    return _REFERENCE_PIECE.sub(piece, text)


@given(st.text(alphabet="<>&;|@#!ampltgU1C2 x/:.", max_size=40))
def test_mrkdwn_matches_the_one_pass_grammar(text: str) -> None:
    """Unbalanced `<`/`>`, entities next to tokens and `&` inside tokens parse like a
    single left-to-right scan would."""
    assert render_mrkdwn(text, NAMES) == _reference_render(text)
