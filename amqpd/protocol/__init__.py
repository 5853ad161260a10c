"""The sans-IO AMQP 0-9-1 layer: framing, the hot-path codec, reply codes and errors.

Nothing in this package touches a socket or an event loop; it turns bytes into frames and
frames into bytes, so it can be tested by feeding bytes and reading bytes.
"""
