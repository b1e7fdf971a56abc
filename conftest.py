"""Root pytest set-up: plugins that apply to every test item, notebooks included."""
pytest_plugins = ["tools.records"]
