"""The policy as written: validated, user-facing models (AbusePolicy v1alpha1)."""
