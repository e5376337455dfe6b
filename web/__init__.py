"""The browser client (index.html, app.js, style.css), served by ``realtime/http/app.py``."""
