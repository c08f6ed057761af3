"""signstream.recipes."""
