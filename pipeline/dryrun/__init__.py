"""The dry run: what a run would send, cost and break, as a report."""
