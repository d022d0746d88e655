"""Built-in routing policies, each a plugin found through Switchyard's entry points."""
