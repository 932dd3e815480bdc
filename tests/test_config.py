import pytest

from covfast.config import CLASSES, Config, load_config, parse_classes, parse_lr
from covfast.errors import CovfastError


def write_ini(tmp_path, body):
    p = tmp_path / "settings.ini"
    p.write_text("[covfast]\n" + body)
    return p


def test_packaged_defaults_when_nothing_else(tmp_path):
    cfg = load_config(tmp_path / "missing.ini", env={})
    assert cfg == Config()
    # all three classes by default (the reference study's two are one flag away)
    assert cfg.img_size == 256 and cfg.epochs == 30 and cfg.classes == ("COVID-19", "Non-COVID", "Normal")
    assert cfg.precision == "auto"


def test_precedence_flag_over_env_over_ini_over_packaged(tmp_path):
    ini = write_ini(tmp_path, "bs = 4\nepochs = 5\nimg_size = 128\n")
    env = {"COVFAST_EPOCHS": "7", "COVFAST_IMG_SIZE": "96"}
    cfg = load_config(ini, env=env, img_size=64, data_path=None)
    assert cfg.bs == 4  # settings.ini over packaged
    assert cfg.epochs == 7  # environment over settings.ini
    assert cfg.img_size == 64  # flag over environment
    assert cfg.seed == Config().seed  # packaged default where nothing is given


def test_repo_settings_ini_is_valid():
    from pathlib import Path
    cfg = load_config(Path(__file__).parents[1] / "settings.ini", env={})
    assert cfg.img_size == 256 and cfg.epochs == 30


@pytest.mark.parametrize("env,match", [
    ({"COVFAST_BS": "abc"}, "COVFAST_BS"),
    ({"COVFAST_CLASSES": "COVID-19,Flu"}, "Flu"),
    ({"COVFAST_LR": "fast"}, "fast"),
])
def test_bad_values_name_their_source(tmp_path, env, match):
    with pytest.raises(CovfastError, match=match):
        load_config(tmp_path / "none.ini", env=env)


def test_unknown_ini_key_is_an_error(tmp_path):
    ini = write_ini(tmp_path, "batch = 4\n")
    with pytest.raises(CovfastError, match="unknown setting 'batch'"):
        load_config(ini, env={})


def test_parse_classes_and_lr():
    assert parse_classes("all") == CLASSES
    assert parse_classes("non-covid, COVID-19") == ("COVID-19", "Non-COVID")  # dataset order, any case
    assert parse_lr("auto") is None and parse_lr("3e-4") == pytest.approx(3e-4)
    with pytest.raises(CovfastError):
        parse_lr("-1")
