"""The local MemOS-compatible server: app, store, fault injection."""
