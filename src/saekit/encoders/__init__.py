"""Encoder families. Every module here registers one architecture; they are discovered automatically."""
