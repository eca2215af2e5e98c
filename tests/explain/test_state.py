import pytest
from torch import nn

from lightning_xai.explain import preserved_state


def test_flags_grads_and_hooks_restored_on_exception():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    model[0].bias.requires_grad_(False)
    kept = model.register_forward_hook(lambda *args: None)
    with pytest.raises(KeyError), preserved_state(model, eval_mode=True):
        assert not model.training and not model[1].training
        model.requires_grad_(True)
        model[0].register_forward_hook(lambda *args: None)
        model.register_forward_pre_hook(lambda *args: None)
        raise KeyError("inside")
    assert model.training and model[1].training
    assert model[0].weight.requires_grad and not model[0].bias.requires_grad
    assert (
        list(model._forward_hooks) == [kept.id]
        and not model._forward_pre_hooks
        and not model[0]._forward_hooks
    )


def test_non_modules_are_ignored():
    with preserved_state(lambda x: x, None):
        pass
