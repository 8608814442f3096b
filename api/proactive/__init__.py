"""Proactive service (未诉先办): season calendars and notice campaigns, complaint clusters, sensitive-household
revisits and heating-season SLA breaches."""
