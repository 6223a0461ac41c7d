"""Experiments that use the library but are not part of it; each folder says what it was and how to rerun it."""
