"""Recipe files: safe YAML loading, typed schema, overrides, one error report."""
