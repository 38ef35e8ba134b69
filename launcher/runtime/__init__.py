"""What runs inside each worker process (torch is imported here, never in the CLI)."""
