"""Observe: what happens on hosts, kept beyond their death; drift of a live host from its image."""
