pytest_plugins = ["miraslab.testing.pytest_plugin"]  # miraslab's conformance kit
