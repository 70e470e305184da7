from django.apps import AppConfig


class RulesConfig(AppConfig):
    name = "rules"
    verbose_name = "Rules"

    def ready(self) -> None:
        # Rules run on every closed candle; market data announces them without importing rules.
        from marketdata.events import close_listener_register
        from rules.evaluation import on_candles_closed

        close_listener_register(on_candles_closed)
