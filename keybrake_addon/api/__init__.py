"""The vault HTTP API (`/vault/*`) and the base-URL vendor routes (`/stripe/*`, ...)."""
