"""Heat Steward API: app factory, settings, database, auth and the heating domain."""

__version__ = "0.1.0"
