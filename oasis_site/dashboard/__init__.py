"""The operators' live dashboard: server-rendered pages that update over /ws/live/."""
