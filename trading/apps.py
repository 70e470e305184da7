from django.apps import AppConfig


class TradingConfig(AppConfig):
    name = "trading"
    verbose_name = "Trading"

    def ready(self) -> None:
        from prometheus_client import REGISTRY

        from trading.metrics_collectors import DriftCollector

        # Once per process (ready() can run twice under some test runners).
        if not any(isinstance(c, DriftCollector) for c in list(REGISTRY._collector_to_names)):
            REGISTRY.register(DriftCollector())
