"""What the service tells operators about itself: Prometheus metrics on a registry owned by the app.

The metric names are a contract with ``deploy/`` (Grafana dashboards, alert rules). Nothing here
knows about HTTP or the models; the layers above feed it.
"""
