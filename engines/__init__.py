"""Avatar engines: one folder per engine family; ``base`` holds the shared contract."""
