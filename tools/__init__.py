"""signstream.tools."""
