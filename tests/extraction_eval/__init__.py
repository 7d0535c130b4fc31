"""Extraction evaluation set: pages written for newsmon with their expected text and date."""
