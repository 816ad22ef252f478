"""The `keybrake` command line."""
