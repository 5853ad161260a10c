"""Who may connect and what they may do: users and passwords, SASL mechanisms,
per-vhost permissions, TLS contexts. Imports only the protocol layer (for reply codes).
"""
