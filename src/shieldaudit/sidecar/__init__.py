"""The sidecar process: app, HTTP server, metrics, and the watch machinery.

The app (:mod:`.app`), its HTTP server (:mod:`.http`), its metrics
(:mod:`.metrics`) and the machinery that watches every trail at once (:mod:`.watch`).
"""
