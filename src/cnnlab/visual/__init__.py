"""Drawing only: the book's plots and image grids, and the live training figure (ProgressBoard); no model
or training knowledge, so every layer above may draw."""
