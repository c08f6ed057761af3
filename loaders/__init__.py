"""signstream.loaders."""
