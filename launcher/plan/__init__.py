"""Launch planning as pure data: topology, batch arithmetic, per-node commands."""
