"""Following an execution's events live: one way to open a subscription, three transports.

``opening`` turns a client's credentials and cursor into a subscription (and
holds the table of what each transport answers on each failure);
``subscription`` follows the log with the channel layer as a doorbell;
``websocket`` (with ``frames``), ``sse`` and ``poll`` adapt it to their wire.
"""
