"""Built-in plugins. Each module is a worked example of a third-party plugin: it imports only the public
API of ``trainforge`` and registers through the same hooks."""
