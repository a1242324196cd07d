"""Structured captions: schema, parsing, safe repairs, checks, verification, building, previews."""
