"""A mail from templates to bytes: composition, the prebuilt skeleton, the kinds of mail, the footer."""
