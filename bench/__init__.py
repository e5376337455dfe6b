"""Measurement, beside the product: one module per ``avatar bench`` suite (``gpu``, ``api_latency``, ``capacity``,
``placement``, ``soak``...) and the pieces they share (a recording WebRTC viewer, ``viewer_recorder``; lip-sync
measurement, ``av_sync``). It imports the product (engines, realtime, export); the product never imports it."""
