"""miraslab's built-in plugins.

Each module here is registered exactly like a third-party plugin: it is an entry point
of the ``miraslab`` group (see ``pyproject.toml``), it implements hooks from
``miraslab.hookspecs`` with ``@miraslab.hookimpl``, and it imports only miraslab's
public modules.  Copy one to start a plugin of your own (docs/plugins.md).
"""
