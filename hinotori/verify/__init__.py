"""Verify: serverspec-style checks run against a host before any traffic reaches it."""
