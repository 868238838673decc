"""qlab's REST API (v1): routes and bearer auth, mounted beside the pages by dashboard/asgi.py."""
