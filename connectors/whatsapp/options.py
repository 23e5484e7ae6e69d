"""Options of the `whatsapp` source (keys under `options:`; see docs/whatsapp.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from connectors.base import ConnectorOptions, known_time_zone, user_id_template


class Options(ConnectorOptions):
    """Keys allowed under a `whatsapp` source's `options:` (see docs/whatsapp.md)."""

    timezone: str = "UTC"
    """IANA zone the export's times are written in (WhatsApp writes local times, no offset)."""
    date_order: Literal["auto", "dmy", "mdy", "ymd"] = "auto"
    """Order of day, month and year in the dates; auto: decided per file from all its dates."""
    conversation: Literal["day", "session", "chat"] = "day"
    """day: one conversation per chat per calendar day; session: split where the chat
    pauses longer than `session_gap_minutes`; chat: the whole chat is one conversation."""
    session_gap_minutes: int = Field(default=60, ge=1)
    memory_owner: Literal["workspace", "author", "group"] = "workspace"
    """workspace: everything to `user_id`, content prefixed `Name: `; group: everything to
    `user_id`, no prefix, the speaker in author_id/author_name (MemOS group chats);
    author: each person's messages to their own user_id."""
    owner_name: str | None = None
    """Your name as the export shows it: your messages are role `user` and, in author mode,
    go to `user_id`; others get `others_role`."""
    others_role: Literal["user", "assistant"] = "user"
    """Role of the messages of everyone but `owner_name`."""
    user_id_template: str = "{id}"
    """author mode: user_id made from {id} (phone digits or name) and {name}."""
    user_map: dict[str, str] = Field(default_factory=dict)
    """author mode: sender (name, phone number or id) -> user_id, before the template."""
    speaker_prefix: bool | None = None
    """Prefix content with `Name: `; default on in workspace mode, off otherwise."""
    chat_name: str | None = None
    """Name of the chat (default: from the file or ZIP name); part of every id."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_time_zone(value)

    @field_validator("user_id_template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        return user_id_template(value, ("id", "name"))

    @field_validator("chat_name", "owner_name")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Options:
        if self.memory_owner == "group" and self.speaker_prefix:
            raise ValueError("speaker_prefix cannot be on with memory_owner 'group'")
        if self.others_role != "user" and self.owner_name is None:
            raise ValueError("others_role needs owner_name (whose messages stay 'user')")
        return self
