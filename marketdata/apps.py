from django.apps import AppConfig


class MarketdataConfig(AppConfig):
    name = "marketdata"
    verbose_name = "Market data"

    def ready(self) -> None:
        from marketdata.broadcasts import candles_broadcast
        from marketdata.events import close_listener_register

        # First listener (apps are ready in INSTALLED_APPS order): dashboards hear of a close
        # before rules spend time evaluating it.
        close_listener_register(candles_broadcast)
