"""Watching every trail at once: inotify, rotation-safe tailing, and the checkpoint."""
