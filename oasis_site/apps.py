from django.apps import AppConfig


class OasisSiteConfig(AppConfig):
    name = "oasis_site"
    verbose_name = "Oasis site"

    def ready(self) -> None:
        from prometheus_client import REGISTRY

        from oasis_site.metrics_collectors import register_collectors

        register_collectors(REGISTRY)
