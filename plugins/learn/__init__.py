"""Learned routing and cascade judges (issue 14): the pre-router's model, the answer
scorer, their features, metrics and model files, and the ``switchyard eval``/``train``
commands (``plugins.learn.commands``)."""
