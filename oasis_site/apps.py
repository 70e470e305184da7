from django.apps import AppConfig


class OasisSiteConfig(AppConfig):
    name = "oasis_site"
    verbose_name = "Oasis site"
