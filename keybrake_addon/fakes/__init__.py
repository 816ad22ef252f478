"""Local stand-ins for vendor APIs (stdlib only), used by end-to-end tests, `keybrake demo` and benchmarks."""
