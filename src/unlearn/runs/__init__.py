"""Run folders and what they record."""
