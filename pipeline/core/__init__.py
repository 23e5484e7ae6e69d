"""The floor: handoff formats and shared pieces every stage uses; imports nothing above it."""
