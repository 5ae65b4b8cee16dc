"""mailer: a self-hosted mail-seminar engine."""
