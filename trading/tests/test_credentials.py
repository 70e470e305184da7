import json
import os

import pytest

from trading.credentials import ExchangeCredentials, Redactor, credentials_from_environment, redact

KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"


def test_direct_variables():
    environ = {"OASIS_BINANCE_API_KEY": KEY, "OASIS_BINANCE_API_SECRET": f"{SECRET}\n"}
    credentials = credentials_from_environment(environ, "binance")
    assert credentials == ExchangeCredentials(api_key=KEY, secret=SECRET)
    assert credentials.password is None
    assert credentials_from_environment(environ, "binanceus") is None


def test_password_and_exchange_names():
    environ = {
        "OASIS_COINBASE_API_KEY": "k" * 12,
        "OASIS_COINBASE_API_SECRET": "s" * 12,
        "OASIS_COINBASE_API_PASSWORD": "pass phrase",
    }
    credentials = credentials_from_environment(environ, "coinbase")
    assert credentials is not None
    assert credentials.password == "pass phrase"


@pytest.mark.parametrize("environ", [{}, {"OASIS_BINANCE_API_KEY": "", "OASIS_BINANCE_API_SECRET": ""}])
def test_nothing_set_is_none(environ):
    assert credentials_from_environment(environ, "binance") is None


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({"OASIS_BINANCE_API_KEY": KEY}, "OASIS_BINANCE_API_SECRET"),
        ({"OASIS_BINANCE_API_SECRET": SECRET}, "OASIS_BINANCE_API_KEY"),
        ({"OASIS_BINANCE_API_PASSWORD": SECRET}, "OASIS_BINANCE_API_KEY"),
    ],
)
def test_half_set_names_the_variable_never_the_value(environ, missing):
    with pytest.raises(ValueError, match=missing) as error:
        credentials_from_environment(environ, "binance")
    assert KEY not in str(error.value)
    assert SECRET not in str(error.value)


def test_repr_shows_at_most_the_last_four_characters_of_the_key():
    credentials = ExchangeCredentials(api_key=KEY, secret=SECRET, password="hunter2-hunter2")
    for text in (repr(credentials), str(credentials), f"{credentials}", repr([credentials])):
        assert SECRET not in text
        assert KEY not in text
        assert "hunter2" not in text
        assert KEY[-4:] in text
        assert KEY[-5:] not in text
    assert "sim-key" not in repr(ExchangeCredentials(api_key="sim-key", secret="sim-secret"))


def test_both_parts_are_required():
    with pytest.raises(ValueError, match="both"):
        ExchangeCredentials(api_key=KEY, secret="")


def write_secrets(tmp_path, document, mode=0o600):
    path = tmp_path / "binance.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    os.chmod(path, mode)
    return {"OASIS_BINANCE_SECRETS_FILE": str(path)}


def test_secrets_file(tmp_path):
    environ = write_secrets(tmp_path, {"api_key": KEY, "api_secret": SECRET})
    assert credentials_from_environment(environ, "binance") == ExchangeCredentials(api_key=KEY, secret=SECRET)
    pem = (
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oPCfhhfbBxXQ\n"
        "-----END EC PRIVATE KEY-----\n"
    )
    environ = write_secrets(tmp_path, {"api_key": "organizations/o/apiKeys/k", "api_secret": pem}, mode=0o400)
    credentials = credentials_from_environment(environ, "binance")
    assert credentials is not None
    assert credentials.secret == pem.strip()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_secrets_file_readable_by_others_is_refused(tmp_path, mode):
    environ = write_secrets(tmp_path, {"api_key": KEY, "api_secret": SECRET}, mode=mode)
    with pytest.raises(ValueError, match="chmod 600") as error:
        credentials_from_environment(environ, "binance")
    assert "OASIS_BINANCE_SECRETS_FILE" in str(error.value)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (f'{{"api_key": "{KEY}", "api_secret": "{SECRET}"', "is not JSON"),
        (f"api_key={KEY}\napi_secret={SECRET}\n", "is not JSON"),
        ({"api_key": KEY}, "'api_secret'"),
        ({"api_key": KEY, "api_secret": SECRET, "apiSecret": SECRET}, "unknown field"),
        ({"api_key": KEY, "api_secret": 12}, "'api_secret'"),
        ([KEY, SECRET], "JSON object"),
    ],
)
def test_bad_secrets_file_never_quotes_it(tmp_path, document, message):
    environ = write_secrets(tmp_path, document)
    with pytest.raises(ValueError, match=message) as error:
        credentials_from_environment(environ, "binance")
    assert KEY not in str(error.value)
    assert SECRET not in str(error.value)
    assert "OASIS_BINANCE_SECRETS_FILE" in str(error.value)


def test_secrets_file_missing_or_given_twice(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        credentials_from_environment({"OASIS_SIM_SECRETS_FILE": str(tmp_path / "absent.json")}, "sim")
    environ = write_secrets(tmp_path, {"api_key": KEY, "api_secret": SECRET})
    environ["OASIS_BINANCE_API_KEY"] = KEY
    with pytest.raises(ValueError, match="one place only") as error:
        credentials_from_environment(environ, "binance")
    assert KEY not in str(error.value)


def test_redactor_masks_key_secret_signature_and_tokens():
    credentials = ExchangeCredentials(api_key=KEY, secret="se/cr+et=value==", password="pass-phrase-1")
    redactor = Redactor(credentials)
    text = (
        f"binance GET http://x/api/v3/order?symbol=BTCUSDT&timestamp=1&signature={'ab12' * 16} "
        f"X-MBX-APIKEY: {KEY} secret se/cr+et=value== encoded se%2Fcr%2Bet%3Dvalue%3D%3D "
        "pass-phrase-1 Authorization: Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    )
    masked = redactor(text)
    for leaked in (KEY, "se/cr+et", "se%2Fcr", "ab12ab12", "pass-phrase", "eyJhbGci"):
        assert leaked not in masked
    assert "signature=***" in masked
    assert "Bearer ***" in masked
    assert "symbol=BTCUSDT&timestamp=1" in masked
    assert redact(text, credentials) == masked
    assert redact("signature=deadbeef", None) == "signature=***"


def test_redactor_masks_each_line_of_a_multiline_secret():
    body = "MHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oPCfhhfbBxXQ"
    pem = f"-----BEGIN EC PRIVATE KEY-----\n{body}\n-----END EC PRIVATE KEY-----"
    redactor = Redactor(ExchangeCredentials(api_key="organizations/o/apiKeys/k", secret=pem))
    assert body not in redactor(f"could not load key {body!r}")
    assert body not in redactor(pem.replace("\n", "\\n"))
