from django.contrib.auth.models import User
from factory.declarations import LazyAttribute, Sequence
from factory.django import DjangoModelFactory


class UserFactory(DjangoModelFactory[User]):
    class Meta:
        model = User
        django_get_or_create = ("username",)

    username = Sequence(lambda n: f"trader{n}")
    email = LazyAttribute(lambda user: f"{user.username}@desk.example.com")
