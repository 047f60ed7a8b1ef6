"""Where image bytes live: a small interface and its backends."""
