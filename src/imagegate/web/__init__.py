"""The web page for people: sign up, upload, gallery, sharing and account settings.

Plain HTML, CSS and JavaScript modules in ``static/`` (no build step, nothing from a CDN),
served by ``imagegate serve`` in embedded mode and as static files by the gateway.
"""
