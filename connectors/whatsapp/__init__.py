"""WhatsApp chat exports (`_chat.txt`, `WhatsApp Chat with X.txt`, alone or in the ZIP)."""
