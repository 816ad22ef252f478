"""Keybrake: dollar caps, endpoint allowlists and an audit trail for vendor API keys."""

__version__ = "0.1.0"
