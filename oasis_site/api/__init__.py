"""What every app's REST API shares: pagination, throttling, the auth-flag permission, the error
body, the CSV renderer and the parameter fields. `oasis_site.api.urls` composes `/api/v1/` from
each app's `api/urls.py`; nothing else here imports an app."""
