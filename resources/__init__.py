"""Data files shipped with DistillDesk (icons, styles, catalog, prompts, demo model files)."""
