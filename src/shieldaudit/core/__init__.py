"""The format's core, shared by every process: errors, time stamps, settings, models.

Nothing here does I/O beyond reading the settings file, and nothing here
imports another shieldaudit package.
"""
