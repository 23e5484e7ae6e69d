"""memos-etl: move chat history into MemOS long-term memory, exactly once."""

__version__ = "0.1.0"
