"""signstream.models."""
