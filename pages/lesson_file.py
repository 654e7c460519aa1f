"""Lesson file (stub)."""
