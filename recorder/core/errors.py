"""Errors the pure cores raise for their callers to report."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting has a bad value; the message names the variable and what it expects."""
