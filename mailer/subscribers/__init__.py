"""The people on the list: sign-up, confirmation, leaving, their addresses and link tokens."""
