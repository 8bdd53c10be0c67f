import pytest

from s5vh_cli import config as C
from s5vh_cli.errors import InputError


def test_paper_default_and_released_switches():
    m, t, c = C.preset("ucf")
    assert (m.tie_directions, m.decoder_order, m.mamba_init, m.centers_mode) == (False, "temporal", "mamba", "fixed")
    assert t.label_pred == "paper" and m.feature_dim == 4096 and c.n_clusters == 101
    m, t, _ = C.preset("ucf", behaviour="released")
    assert (m.tie_directions, m.decoder_order, m.mamba_init, m.centers_mode) == (
        True, "visible_then_masked", "xavier", "learned")
    assert t.label_pred == "released"


def test_released_preset_values():
    _, t, c = C.preset("fcv")
    assert (t.batch_size, t.mask_ratio, t.alpha, t.a_cluster, t.epochs) == (512, 0.75, 2.5, 0.01, 500)
    assert c.n_clusters == 450
    _, t, _ = C.preset("act")
    assert (t.alpha, t.tau_plus, t.a_cluster) == (0.2, 0.05, 0.001)


def test_validation_errors_are_one_line():
    with pytest.raises(InputError, match="multiple of 8"):
        C.ModelConfig(bits=12).validate()
    with pytest.raises(InputError, match="decoder_order"):
        C.ModelConfig(decoder_order="backwards").validate()
    with pytest.raises(InputError, match="unknown ModelConfig key"):
        C.from_dict(C.ModelConfig, {"bitz": 3})
    with pytest.raises(InputError, match="unknown preset"):
        C.preset("kinetics")


def test_auto_schedule_from_library_size():
    _, t, _ = C.preset("default")
    assert (t.epochs, t.batch_size) == (0, 0)  # chosen at training time

    def sched(n):
        r = C.resolve_schedule(t, n)
        return r.batch_size, r.epochs, -(-n // r.batch_size) * r.epochs

    assert sched(20) == (16, 60, 120)  # a few dozen videos: many short epochs, capped
    assert sched(75) == (16, 40, 200)  # the practitioner's library of issue 13: was 100 epochs of one step
    assert sched(1800) == (128, 14, 210)
    assert sched(45000) == (128, 3, 1056)  # large libraries: at least 3 epochs
    assert C.resolve_schedule(C.replace(t, epochs=7), 75).epochs == 7  # explicit values win
    _, fcv, _ = C.preset("fcv")
    assert C.resolve_schedule(fcv, 100).epochs == 500
