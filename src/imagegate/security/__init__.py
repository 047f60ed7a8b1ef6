"""The security service: accounts, password checks, tokens, login throttling."""
