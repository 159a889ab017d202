"""Example applications wrapped by the audit middleware."""
