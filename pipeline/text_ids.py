"""Stable text ids: the same text gets the same id in every run, on every machine."""
import hashlib

TEXT_ID_LENGTH = 32  # hex characters = 128 bits: collisions stay negligible at billions of texts


def text_id(text: str) -> str:
    """The id of a text given without one: the first 128 bits of SHA-256 of its UTF-8 bytes, in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:TEXT_ID_LENGTH]
