"""Thin Ray Serve wrappers around the Ray-free inference core."""
