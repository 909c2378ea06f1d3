"""Training data: synthetic talking heads and episode sampling."""
