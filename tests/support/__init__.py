"""Test infrastructure shared by the suites: servers to test against, and their provisioning."""
