"""One module per CLI verb. Modules import only light things at top level."""
