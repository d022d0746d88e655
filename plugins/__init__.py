"""Built-in plugins (backends, embeddings, state stores), found through entry points."""
