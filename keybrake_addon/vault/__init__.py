"""The vault: real vendor secrets (encrypted) and the vault keys that stand in for them."""
