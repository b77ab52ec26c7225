"""Adapters for agent frameworks. Each imports its framework; the core never imports them."""
