"""The lite engine: a CPU-only talking portrait (landmarks + audio features + warp renderer)."""
