"""Slack workspace exports."""
